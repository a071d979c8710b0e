"""Data the networks are run on: packaged corpora, the user's own text files, and image sets."""

from anatomist.data.corpus import CORPUS_HELP, TEXT_FIELD_HELP, Corpus, FileCorpus, JoinedCorpus, load_corpus
from anatomist.data.images import ImageSet, load_images

__all__ = ["CORPUS_HELP", "TEXT_FIELD_HELP", "Corpus", "FileCorpus", "ImageSet", "JoinedCorpus", "load_corpus",
           "load_images"]
