"""Data the networks are run on: packaged corpora and image sets."""

from anatomist.data.corpus import Corpus, load_corpus
from anatomist.data.images import ImageSet, load_images

__all__ = ["Corpus", "ImageSet", "load_corpus", "load_images"]
