"""Downstream evaluation of an encoder: fine-tuning, thresholds, metrics and label-efficiency summaries.

* :mod:`.config` - ``FinetuneConfig`` (every key documented); "full" fine-tune vs "linear" probe defined there;
* :mod:`.dataset` - store -> labels (27 scored SNOMED codes / one localization class), patient-aware split,
  nested label subset, in-memory windows;
* :mod:`.model` - linear head on the pooled encoder embedding (sigmoid multi-label / softmax);
* :mod:`.finetune` - the training loop of one run, with MLflow logging when given a run id;
* :mod:`.thresholds` - per-class thresholds maximising the Challenge 2020 metric on validation;
* :mod:`.evaluate` - record-level predictions (mean over windows) and metrics;
* :mod:`.ablation` - summary maths of an ablation (mean and 95% CI over seeds, labels_to_match, gains).
"""
