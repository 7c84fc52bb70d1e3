"""Models: the spatio-temporal transformer encoder (and a 1-D ResNet alternative) plus pretext heads; the
supervised reference CNN (:mod:`.xresnet1d`); generator-driven dropout (:mod:`.dropout`).

Stable API used by fine-tuning::

    from ecgmodel.models import EncoderConfig, build_encoder
    enc = build_encoder(EncoderConfig())
    tokens = enc(x)          # x float (B, 12, T) -> (B, 12, P, d)
    feats = enc.embed(x)     # (B, enc.out_dim)
"""

from ecgmodel.models.encoder import Encoder, EncoderConfig, build_encoder

__all__ = ["Encoder", "EncoderConfig", "build_encoder"]
