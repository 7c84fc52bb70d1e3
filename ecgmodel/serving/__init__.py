"""Models people can use: MLflow pyfunc models of the encoder and the fine-tuned classifiers, and predictions on
your own ECG files.

* :mod:`ecgmodel.serving.contract` - the preprocessing contract a model carries (lead order, rate, units, window,
  crop aggregation), as a typed config and a JSON artifact;
* :mod:`ecgmodel.serving.inputs` - WFDB records, folders, EDF files and stores harmonised the way ingest does;
* :mod:`ecgmodel.serving.core` - the numerics: windows -> per-record probabilities or embeddings (the crop
  aggregation of evaluation);
* :mod:`ecgmodel.serving.pyfunc` - the ``mlflow.pyfunc.PythonModel`` wrappers;
* :mod:`ecgmodel.serving.log` - saving and logging them as MLflow models (signature, input example, contract,
  classes, thresholds, model card);
* :mod:`ecgmodel.serving.register` - the final classifier of a task, the gates and the ``champion`` alias.

``docs/use.md`` shows the load / predict / serve round trip and the exact JSON shape.
"""
