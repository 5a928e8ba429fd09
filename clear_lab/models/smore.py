"""SMORE (Ong & Khong, WSDM 2025: "Spectrum-based Modality Representation Fusion Graph Convolutional Network for
Multimodal Recommendation"), as in MMRec's ``smore.py``.

Shapes: ``U`` users, ``I`` items, ``d`` = ``embedding_size`` (64), ``F = d // 2 + 1`` rFFT coefficients; modality
a (MMRec's ``v_feat``) and b (its ``t_feat``) have features ``x^(a)`` (I x d_a), ``x^(b)`` (I x d_b).

* **Item graphs**, frozen: the similarity-weighted cosine kNN graphs ``S_a`` (``image_knn_k``) and ``S_b``
  (``text_knn_k``), ``D^-1/2 S D^-1/2`` with row degrees (:func:`clear_lab.graph.weighted_knn_graph`), and the
  fusion graph ``S_f``: the union of their edges, each with the larger of its values
  (:func:`clear_lab.graph.max_fusion_graph`). With TikTok's [image, audio] the second key, ``text_knn_k``,
  applies to audio.
* **Encoders**: ``z_a = Linear_a(x^(a))``, ``z_b = Linear_b(x^(b))`` (I x d) on *trainable* copies of the features
  (MMRec's ``from_pretrained(freeze=False)``: the features themselves are fine-tuned).
* **Spectrum fusion** along the d embedding dimensions (``norm="ortho"``), with learnable complex filters
  ``W_a, W_b, W_f`` (1 x F): ``c_a = irfft(rfft(z_a) W_a)``, ``c_b = irfft(rfft(z_b) W_b)`` (denoising) and
  ``c_f = irfft(rfft(z_a) rfft(z_b) W_f)`` (a filtered circular convolution of the two modalities).
* **Gated item views**: ``p_k = e_item * sigmoid(G_k c_k)`` for k in {a, b, f}; ``h_k = S_k^L p_k``
  (``n_layers`` = 1); ``v_k = [R_hat h_k ; h_k]`` ((U+I) x d), ``R_hat`` the user x item block of the normalised
  training graph.
* **User-item view**: ``C`` = LightGCN mean over ``n_ui_layers`` = 3 layers.
* **Modality-aware preference**: feature-wise attention from the fusion view, ``v_a' = softmax(Q_a v_f) * v_a``,
  ``v_b' = softmax(Q_b v_f) * v_b`` (softmax over the d features), ``Q = Linear(d, d) . tanh . Linear(d, d)``;
  preference gates ``P_k = dropout(sigmoid(H_k C))`` (``dropout_rate``); ``side = mean(P_a v_a', P_b v_b', P_f v_f)``.
  Output ``E = C + side``, score ``e_u . e_i``.
* **Loss**: as MGCN's, ``BPR + reg_weight * squared norms / (2 B) + cl_loss * [InfoNCE(side_i+, C_i+) +
  InfoNCE(side_u, C_u)]`` at temperature 0.2.

The fusion is a product of exactly two spectra, so SMORE takes exactly two modalities.

Where CLEAR acts: under input placement the kNN graphs (and so the fusion graph) are built from the projected
features and the trainable feature copies start from them (the *projected* features are fine-tuned). Under latent
placement the hook sees ``z_a``, ``z_b`` (I x d each) in every forward, before the FFT.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from clear_lab.graph import SparseOperator, max_fusion_graph, weighted_knn_graph
from clear_lab.models.mgcn import ItemGraphViewsModel


def _gate(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Sigmoid())


def _query(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))


class SMORE(ItemGraphViewsModel):
    name = "smore"
    uses_features = True
    latent_hook = "z_m = Linear_m(x^(m)) (MMRec's image_trs/text_trs outputs, n_items x embedding_size), before " \
                  "the spectrum fusion"
    default_params = {"embedding_size": 64, "n_ui_layers": 3, "n_layers": 1, "image_knn_k": 10, "text_knn_k": 10,
                      "reg_weight": 1e-4, "dropout_rate": 0.0, "cl_loss": 0.01, "learning_rate": 1e-3}
    lr_schedule: ClassVar[tuple[float, int]] = (0.96, 50)
    param_help = {"embedding_size": "ID and encoder width d", "n_ui_layers": "user-item LightGCN layers",
                  "n_layers": "item-graph hops", "image_knn_k": "neighbours per item in the first modality's graph",
                  "text_knn_k": "neighbours per item in the second modality's graph",
                  "reg_weight": "weight of the squared-norm regulariser on the output rows",
                  "dropout_rate": "dropout on the preference gates (training only)",
                  "cl_loss": "weight of the two InfoNCE terms (side vs content view)",
                  "learning_rate": "Adam learning rate"}
    deviations = ("The weighted kNN graph caches are keyed by a hash of the features and k, not by k alone (MMRec's "
                  "image_adj_{k}_True.pt files are shared with MGCN and reused for projected features).",
                  "A zero feature row (or a non-positive kNN degree) gets cosine 0 / d^-1/2 = 0 instead of NaN.",
                  "The regulariser divides by the actual batch size, not the configured train_batch_size (they "
                  "differ only on the last, smaller batch of an epoch).",
                  "InfoNCE written as logsumexp (same value); graph degrees get +1e-7 as in clear_lab's LightGCN.",
                  "Evaluation propagates once per evaluation instead of once per batch of users (same scores); "
                  "no hard-coded .cuda().",
                  "Exactly two modalities are required (ValueError otherwise); MMRec would crash on a missing one.")

    def __init__(self, data, params=None, device="cpu", cache_dir=None):
        super().__init__(data, params, device, cache_dir)
        p = self.params
        if len(data.modalities) != 2:
            raise ValueError(f"SMORE fuses exactly two modalities (its FFT fusion is pairwise), got "
                             f"{len(data.modalities)}: {data.modalities}; pick two")
        if not 0 <= p["dropout_rate"] < 1:
            raise ValueError(f"SMORE dropout_rate must be in [0, 1), got {p['dropout_rate']}")
        d = p["embedding_size"]
        self.dropout = nn.Dropout(p["dropout_rate"])
        self._init_common(data)  # the ID embeddings first: creation order follows MMRec's

        self.modality_names = list(data.modalities)
        feats = [torch.as_tensor(data.features[m], dtype=torch.float32, device=self.device)
                 for m in self.modality_names]
        self.feat_embeddings = nn.ModuleList(nn.Embedding.from_pretrained(x.clone(), freeze=False) for x in feats)
        g_a = weighted_knn_graph(feats[0], p["image_knn_k"], cache_dir=self.cache_dir)
        g_b = weighted_knn_graph(feats[1], p["text_knn_k"], cache_dir=self.cache_dir)
        self.graph_a, self.graph_b = SparseOperator(g_a), SparseOperator(g_b)
        self.graph_f = SparseOperator(max_fusion_graph(g_a, g_b))

        # MMRec's Linear layers keep torch's default initialisation (SMORE applies no xavier_normal)
        self.feat_trs = nn.ModuleList(nn.Linear(x.shape[1], d) for x in feats)
        self.query_a, self.query_b = _query(d), _query(d)
        self.gate_a, self.gate_b, self.gate_f = _gate(d), _gate(d), _gate(d)
        self.prefer_a, self.prefer_b, self.prefer_f = _gate(d), _gate(d), _gate(d)
        n_freq = d // 2 + 1
        # complex filters stored as (real, imag) pairs, randn as MMRec
        self.complex_a = nn.Parameter(torch.randn(1, n_freq, 2))
        self.complex_b = nn.Parameter(torch.randn(1, n_freq, 2))
        self.complex_f = nn.Parameter(torch.randn(1, n_freq, 2))
        self.to(self.device)

    def encoded_modalities(self) -> dict[str, torch.Tensor]:
        return {name: trs(emb.weight) for name, emb, trs in
                zip(self.modality_names, self.feat_embeddings, self.feat_trs)}

    def spectrum_convolution(self, z_a: torch.Tensor, z_b: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_a, c_b, c_f)``, each like ``z_a``: per-modality filtered signals and the filtered product spectrum."""
        n = z_a.shape[1]
        f_a = torch.fft.rfft(z_a, dim=1, norm="ortho")
        f_b = torch.fft.rfft(z_b, dim=1, norm="ortho")
        w_a, w_b, w_f = (torch.view_as_complex(w) for w in (self.complex_a, self.complex_b, self.complex_f))
        c_a = torch.fft.irfft(f_a * w_a, n=n, dim=1, norm="ortho")
        c_b = torch.fft.irfft(f_b * w_b, n=n, dim=1, norm="ortho")
        c_f = torch.fft.irfft(f_a * f_b * w_f, n=n, dim=1, norm="ortho")
        return c_a, c_b, c_f

    def forward_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_a, z_b = self.encoded_modalities().values()
        z_a, z_b = self.modality_hook(z_a, z_b)
        c_a, c_b, c_f = self.spectrum_convolution(z_a, z_b)
        item = self.item_id_embedding.weight
        v_a = self.item_view(self.graph_a, item * self.gate_a(c_a))
        v_b = self.item_view(self.graph_b, item * self.gate_b(c_b))
        v_f = self.item_view(self.graph_f, item * self.gate_f(c_f))
        content = self.content_view()

        # feature-wise attention over the d dimensions, read from the fusion view
        agg_a = torch.softmax(self.query_a(v_f), dim=-1) * v_a
        agg_b = torch.softmax(self.query_b(v_f), dim=-1) * v_b
        agg_a = self.dropout(self.prefer_a(content)) * agg_a
        agg_b = self.dropout(self.prefer_b(content)) * agg_b
        agg_f = self.dropout(self.prefer_f(content)) * v_f
        side = (agg_a + agg_b + agg_f) / 3
        return content + side, side, content
