"""Downstream evaluation of an encoder: fine-tuning, thresholds, metrics and label-efficiency summaries.

* :mod:`.config` - ``FinetuneConfig`` (every key documented); "full" fine-tune vs "linear" probe defined there;
* :mod:`.dataset` - store -> labels (27 scored SNOMED codes / one localization class), patient-aware split,
  nested label subset, in-memory windows;
* :mod:`.model` - linear head on the pooled encoder embedding (sigmoid multi-label / softmax); ``model.pt`` keys and
  ``load_downstream_model`` (transformer or xresnet1d);
* :mod:`.finetune` - one run: early-stopped training (full mode, every init incl. the supervised xresnet1d arm) or
  the linear probe, with MLflow logging when given a run id; per-cell random generators;
* :mod:`.probe` - the linear probe: logistic regression on standardised mean+max frozen embeddings, C chosen on
  the cell's validation labels;
* :mod:`.thresholds` - per-class thresholds maximising the Challenge 2020 metric on validation;
* :mod:`.evaluate` - record-level predictions (crops tiling every window) and metrics; cached crop embeddings;
* :mod:`.ablation` - summary maths of an ablation (mean and 95% CI over seeds, labels_to_match, gains).
"""
