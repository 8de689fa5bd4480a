"""Classification heads: how a sentence representation is pooled from the encoder's token vectors.

BERT's own ``BertForSequenceClassification`` classifies the ``[CLS]`` token after a dense+tanh "pooler".
all-MiniLM-L6-v2, however, was trained (by sentence-transformers, on ~1B sentence pairs) to make the **mean
of its token vectors** meaningful; its ``[CLS]`` vector and pooler were never trained for that. The
``mean`` head below classifies that masked mean directly — the representation the model was built to give.

The head is chosen by ``config.classifier_pooling`` (``"cls"`` or ``"mean"``), which ``save_pretrained``
stores in ``config.json``, so :func:`lib.artifacts.load` rebuilds the right class. A classifier with one
hidden layer (:func:`set_hidden_head`, what 07_privacy trains) is recorded as ``config.classifier_hidden``
and rebuilt the same way.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls")


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (batch, tokens, dim) over the tokens where ``attention_mask`` is 1 (padding
    ignored)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def set_hidden_head(model: nn.Module, hidden: int, seed: int | None = None) -> nn.Module:
    """Replace ``model``'s linear classifier by one with a hidden layer of ``hidden`` units (Linear → GELU →
    dropout → Linear; its initial weights seeded with ``seed`` if given), recorded in
    ``model.config.classifier_hidden`` so that a saved model loads with the same head
    (:func:`lib.artifacts.load`). Returns ``model``."""
    width, labels = model.classifier.in_features, model.classifier.out_features
    if seed is not None:
        torch.manual_seed(seed)
    model.classifier = nn.Sequential(
        nn.Linear(width, hidden), nn.GELU(), nn.Dropout(model.dropout.p), nn.Linear(hidden, labels)
    )
    model.config.classifier_hidden = hidden
    return model


class MeanPoolingBertForSequenceClassification(BertPreTrainedModel):
    """BERT encoder → masked mean of the last hidden states → dropout → linear classifier.

    Same parameter names as ``BertForSequenceClassification`` (``bert.*``, ``classifier.*``) minus the unused
    pooler, so LoRA targets, pruning and export code treat both heads alike.
    """

    def __init__(self, config):
        super().__init__(config)
        config.classifier_pooling = "mean"
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)  # peft passes it; we always return an output object
        out = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device)
        logits = self.classifier(self.dropout(masked_mean(hidden, attention_mask)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
