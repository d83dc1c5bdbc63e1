"""birdcnn: is there a bird in this photo? A convolutional network to train, evaluate and use.

    >>> import birdcnn
    >>> clf = birdcnn.load_model()            # the model shipped in the package
    >>> birdcnn.classify(["photo.jpg"], clf)  # [{"path": ..., "label": "bird", "bird_probability": ...}]
    >>> for record in birdcnn.iter_classify(many_paths, clf): ...  # the same, as each batch is scored
"""
__version__ = "0.1.0"
__all__ = ["Classifier", "classify", "iter_classify", "load_model", "__version__"]


def __getattr__(name: str):
    # Lazy: `import birdcnn` (and `birdcnn --help`) must not pay for importing torch.
    if name in ("Classifier", "load_model"):
        from . import modelfile
        return getattr(modelfile, name)
    if name in ("classify", "iter_classify"):
        from . import predict
        return getattr(predict, name)
    raise AttributeError(name)
