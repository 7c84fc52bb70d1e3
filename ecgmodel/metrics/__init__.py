"""Metrics: the official Challenge 2020 score (:mod:`.challenge2020`) and scikit-learn based classification
metrics (:mod:`.classification`)."""
