"""The study around the library: data preparation, metrics, training runs, the benchmark and
the report, with the small data samples they ship (`samples/`).

A user of the models, never a part of them: no modeling file imports this package and no
checkpoint carries it (`save_pretrained` copies a model file and its single-dot imports only).
Its modules are imported by name (`from longctx.experiments import study`); importing the
package itself loads none of them.
"""
