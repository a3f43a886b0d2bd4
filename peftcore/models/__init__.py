"""Encoder models (BERT, RoBERTa, MiniLM) and their loading from Hugging Face folders."""
from .configuration import EncoderConfig
from .encoder import (AutoModel, AutoModelForSequenceClassification, BertForSequenceClassification,
                      BertModel, RobertaForSequenceClassification, RobertaModel)
from .parameter import Parameter

__all__ = ["EncoderConfig", "AutoModel", "AutoModelForSequenceClassification", "BertModel",
           "RobertaModel", "BertForSequenceClassification", "RobertaForSequenceClassification",
           "Parameter"]
