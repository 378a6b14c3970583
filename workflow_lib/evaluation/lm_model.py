"""The early-exit model as an lm-eval model, registered as `dynamax`.

A subclass of lm-eval's own `HFLM`, so tokenisation, context truncation, stop-sequence handling and the
loglikelihood paths are lm-eval's, unchanged. What differs:
- `generate_until` decodes `batch_size` requests at a time (decoding/decoder.py: every row exits on its own decision
  and gets what batch size 1 gives it) and cuts the text at the stop strings itself, exactly as HFLM does; it keeps
  one statistics entry per request (tokens, exit layers, stop reason, costs, timings, its batch) in
  `self.generations` for the run record; `batch_size` covers loglikelihood and generation;
- `loglikelihood` / `loglikelihood_rolling` run the full model, or the pruned one when prune > 0;
- the model_args give one series of points (heads, policy, `emission` rule with its `translators`, pruning,
  `oracle_exits` instead of heads, `max_draft` / `draft_vocab` for speculative decoding); `add_series` adds more on
  the same loaded model, `set_point(threshold, series)` moves between points, and `share(points)` decodes every
  batch of requests at all those points from one prefill of its prompts (`decode_shared`: the exit cells, the oracle,
  the baseline and the pruning depths of a task share it); a later point replays its stored generations;
- a speculative point (`max_draft`, decoding/speculative.py) is paired with exits off on the same prefill, before or
  after it by turns: its time kept beside the speculative one (the measured speedup, batch for batch), and a request
  whose tokens differ from exits off stops the run, naming its question.

lm-eval 0.4.13 does not read package entry points for models: the class registers itself when this
module is imported. From the command line use `python -m workflow_lib.cli.lm_eval_cli` (lm-eval's own CLI
with this module imported), e.g.
    python -m workflow_lib.cli.lm_eval_cli --model dynamax \
        --model_args backbone=PATH,heads=DIR,threshold=0.4,policy=recompute,prune=0,prune_start=none,emission=lens \
        --tasks dynamax_triviaqa --metadata '{"triviaqa_file": "triviaqa.jsonl"}'
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lm_eval.models  # noqa: F401  (registers the built-in models first; see docs/architecture.md)
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from workflow_lib.decoding.decoder import ExitDecoder, decode_shared
from workflow_lib.decoding.pruning import pruned_logits
from workflow_lib.defaults import EXITS_OFF
from workflow_lib.evaluation.points import MAIN
from workflow_lib.models.backbone import load_backbone, load_tokenizer
from workflow_lib.models.heads import load_heads
from workflow_lib.models.translators import load_translators

eval_logger = logging.getLogger("lm_eval.dynamax")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _none(value):
    """model_args come from a 'k=v,...' string: an empty value or 'none' means not given."""
    return None if value is None or str(value).strip().lower() in ("", "none", "null") else value


def describe(req) -> str:
    """A request as a person finds it again: task, doc id and its question where the doc has one."""
    question = req.doc.get("question") if isinstance(req.doc, dict) else None
    return f"{req.task_name} doc {req.doc_id}" + (f" ({question!r})" if question else "")


def read_draft_vocab(path: str) -> list[int]:
    """The token ids of a draft vocabulary file (cli/draft_vocab.py writes it: {"token_ids": [...], ...})."""
    try:
        ids = json.loads(Path(path).read_text())["token_ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"draft_vocab {path!r}: not a draft vocabulary file ({e})") from None
    return [int(t) for t in ids]


@dataclass
class Series:
    """A series of points on the loaded model: where its heads came from (and what train_heads recorded of them), and
    its decoders, one with exits on (a threshold <= 1) and one with exits off (the baseline, pruning and oracle
    points are that one); the threshold itself is each point's, given to the decoder at each decode."""

    heads: str | None
    heads_meta: dict | None
    decoders: dict[bool, ExitDecoder]

    def decoder(self, threshold: float) -> ExitDecoder:
        return self.decoders[threshold <= 1.0]


@register_model("dynamax")
class DynamaxLM(HFLM):
    def __init__(self, backbone: str, heads: str | None = None, threshold: float = 2.0, policy: str | None = None,
                 prune: int = 0, prune_start: int | None = None, tokenizer: str | None = None,
                 repetition_penalty: float = 1.0,
                 device: str | None = None, dtype: str | None = None, seed: int = 0, batch_size: int | str = 1,
                 max_length: int | None = None, oracle_exits: str | list[int] | None = None,
                 emission: str = "last_block", translators: str | None = None, max_draft: int | str | None = None,
                 draft_vocab: str | None = None, **kwargs):
        dtype = _none(dtype)
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        device = _none(device) or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():  # lm_eval's CLI passes device=cuda by default
            eval_logger.warning("dynamax: CUDA is not available, running on the CPU")
            device = "cpu"
        model = load_backbone(str(backbone), device=device, dtype=DTYPES.get(dtype), seed=int(seed)).eval()
        tok_source = _none(tokenizer) or str(backbone)
        try:
            tok = load_tokenizer(tok_source)
        except (OSError, ValueError) as e:
            raise ValueError(f"no tokenizer at {tok_source!r} (pass tokenizer=PATH in model_args): {e}") from None
        super().__init__(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length, **kwargs)
        self.repetition_penalty = float(repetition_penalty)
        self.generations: list[dict] = []
        self.series: dict[str, Series] = {}
        self._shared: list[tuple[str, float]] = []  # points decoded together (share)
        self._stored: dict[tuple, tuple[str, dict]] = {}  # (point, request key) -> (text, statistics) until replayed
        oracle_exits = _none(oracle_exits)
        if isinstance(oracle_exits, str):  # model_args: 'oracle_exits=2;3;4' (commas separate model_args)
            oracle_exits = [int(x) for x in oracle_exits.replace(";", " ").split()]
        prune_start = _none(prune_start)
        self.add_series(MAIN, heads=_none(heads), policy=_none(policy), emission=_none(emission) or "last_block",
                        translators=_none(translators), prune=int(prune),
                        prune_start=None if prune_start is None else int(prune_start), oracle_exits=oracle_exits,
                        max_draft=None if _none(max_draft) is None else int(max_draft),
                        draft_vocab=_none(draft_vocab))
        self.set_point(float(threshold))

    def add_series(self, name: str, heads: str | None = None, policy: str | None = None,
                   emission: str = "last_block", translators: str | None = None, prune: int = 0,
                   prune_start: int | None = None, oracle_exits: list[int] | None = None,
                   max_draft: int | None = None, draft_vocab: str | None = None) -> None:
        """Another series of points on the loaded model: its heads folder (or none), policy, emission rule and
        translators, pruning, oracle exits, speculative settings. ValueError / FileNotFoundError for heads or
        translators of another backbone, an unknown policy, an exit among pruned blocks ..."""
        config = self.model.config
        head_modules, heads_meta = None, None
        if heads is not None:  # refuses heads of another backbone
            head_modules, heads_meta = load_heads(heads, backbone_config=config, device=self.model.device,
                                                  dtype=self.model.dtype)
            head_modules.eval()
        loaded = None
        if translators is not None:  # refuses translators of another backbone; the decoder checks the rule
            loaded, _ = load_translators(translators, backbone_config=config, device=self.model.device,
                                         dtype=self.model.dtype)
        options = dict(policy=policy, prune=prune, repetition_penalty=self.repetition_penalty,
                       prune_start=prune_start, oracle_exits=oracle_exits, emission=emission, translators=loaded,
                       max_draft=max_draft, draft_vocab=None if draft_vocab is None else read_draft_vocab(draft_vocab))
        # built now: bad settings are refused before any generation; exits on (heads, a threshold <= 1) and off
        self.series[name] = Series(heads, heads_meta, {
            True: ExitDecoder(self.model, head_modules, 0.0, **options),
            False: ExitDecoder(self.model, None if oracle_exits else head_modules, EXITS_OFF, **options)})

    def set_point(self, threshold: float, series: str = MAIN) -> None:
        """Move to another grid point without reloading the model: a threshold of a series (above 1: exits off)."""
        if series not in self.series:
            raise ValueError(f"no series {series!r} (add_series first)")
        self.point = (series, float(threshold))
        self.threshold = float(threshold)
        self.decoder = self.series[series].decoder(self.threshold)
        self.heads_meta = self.series[series].heads_meta
        self.prune, self.prune_start = self.decoder.prune, self.decoder.prune_start
        self._batches = 0
        self.generations = []

    def share(self, points: list[tuple[str, float]]) -> None:
        """Decode every batch of requests at all these points (series, threshold) at once, from one prefill of the
        prompts (decoding/decoder.decode_shared), while the current point is one of them; the other points'
        generations wait in memory (text and statistics) until their point replays them."""
        unknown = [s for s, _ in points if s not in self.series]
        if unknown:
            raise ValueError(f"no series {unknown} (add_series first)")
        self._shared = [(s, float(t)) for s, t in points]
        self._stored = {}

    def warm_up(self, new_tokens: int = 8) -> None:
        """One short untimed generation at the current point, through the path the grid point times (a batch of
        `batch_size` rows): the first calls pay one-off costs (allocator, lazy kernels) that would otherwise land in
        the first grid point's tokens/s."""
        rows = self.batch_size if isinstance(self.batch_size, int) else 1
        with torch.no_grad():
            self.decoder.generate_batch([[self.eot_token_id] * 4] * rows, max_new_tokens=new_tokens,
                                        eos_token_id=[])  # no EOS: all steps run

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if self.prune == 0:
            return super()._model_call(inps, attn_mask, labels)
        return pruned_logits(self.model, inps, self.prune, start=self.prune_start)  # (B, T, V)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by generation settings (lm-eval's Collator, longest prompt first as HFLM orders them)
        and decoded `batch_size` at a time, each row exiting on its own decision, at the current point and at every
        shared point not yet stored for them, all from one prefill (decoding/decoder.decode_shared); every prompt is
        encoded (and truncated) alone, exactly as at batch size 1. A speculative point is paired with exits off
        decoded from the same prefill, before or after it by turns: its time beside the speculative one, and a
        request whose tokens differ stops the run, naming its question."""
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        batch_size = self.batch_size if isinstance(self.batch_size, int) else 1  # 'auto' sizes memory, not exits
        collator = Collator(list(requests), sort_fn=lambda req: (-len(self.tok_encode(req.args[0])), req.args[0]),
                            group_by="gen_kwargs", group_fn=lambda req: req.args[1])
        texts, stats = [], []
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="dynamax generate_until")
        for chunk in collator.get_batched(n=batch_size):
            kwargs = normalize_gen_kwargs(dict(chunk[0].args[1]), self.max_gen_toks)  # one setting per chunk
            if kwargs.get("do_sample"):
                raise ValueError("dynamax decodes greedily; the task asks for do_sample=True")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)  # HFLM adds EOS the same way
            max_gen_toks = kwargs.pop("max_gen_toks")
            keys = [(req.args[0], repr(sorted(req.args[1].items()))) for req in chunk]
            self._batches += 1
            batch_id = self._batches  # one id per decoded batch of this grid point: the run record times batches
            if not all((self.point, key) in self._stored for key in keys):
                prompts = [self.tok_batch_encode([req.args[0]], left_truncate_len=self.max_length - max_gen_toks,
                                                 truncation=self.truncation)[0][0].tolist() for req in chunk]  # as HFLM
                self._decode(chunk, keys, prompts, until, max_gen_toks, batch_id)
            for req, key in zip(chunk, keys):
                text, stat = self._stored[(self.point, key)]
                stats.append({"task": req.task_name, "doc_id": req.doc_id, **stat, "batch_id": batch_id})
                self.cache_hook.add_partial("generate_until", req.args, text)
                texts.append(text)
            pbar.update(len(chunk))
        pbar.close()
        self._stored = {k: v for k, v in self._stored.items() if k[0] != self.point}  # replayed
        self.generations.extend(collator.get_original(stats))
        return collator.get_original(texts)

    def _decode(self, chunk, keys: list[tuple], prompts: list[list[int]], until: list[str], max_gen_toks: int,
                batch_id: int) -> None:
        """Decode one batch at the current point and every shared point not stored for it yet; store them all."""
        points = [self.point] + [q for q in self._shared if q != self.point
                                 and not all((q, key) in self._stored for key in keys)]
        runs = [(self.series[s].decoder(t), t) for s, t in points]
        speculative = [i for i, (d, t) in enumerate(runs) if d.max_draft is not None and d.exits_enabled and t <= 1]
        plain = next((i for i, (d, t) in enumerate(runs) if not d.exits_enabled and not d.prune), None)
        if speculative and plain is None:  # exits off beside them, on the same prefill
            plain = len(runs)
            runs.append((self.series[self.point[0]].decoders[False], EXITS_OFF))
            points.append(None)  # decoded for the pairing only, not a point
        if speculative and batch_id % 2:  # before the speculative runs this time, after them the next
            order = [plain] + [i for i in range(len(runs)) if i != plain]
            runs, points = [runs[i] for i in order], [points[i] for i in order]
            speculative, plain = [order.index(i) for i in speculative], 0
        with torch.no_grad():
            results = decode_shared(runs, prompts, max_new_tokens=max_gen_toks, stop_strings=until,
                                    tokenizer=self.tokenizer, eos_token_id=self.eot_token_id)
        for k, (point, rows) in enumerate(zip(points, results)):
            if point is None:
                continue
            for i, (req, key, ids, res) in enumerate(zip(chunk, keys, prompts, rows)):
                off = results[plain][i] if k in speculative else None
                if off is not None and res.token_ids != off.token_ids:
                    raise ValueError(f"speculative decoding changed the answer to {describe(req)} at point {point}: "
                                     f"{res.token_ids} instead of the full model's {off.token_ids}")
                text = postprocess_generated_text(self.tok_decode(res.token_ids), until, None)
                self._stored[(point, key)] = (text, {  # identical requests decode identically
                    "prompt_tokens": len(ids), "max_new_tokens": max_gen_toks, "token_ids": res.token_ids,
                    "exit_layers": res.exit_layers, "stop_reason": res.stop_reason, "costs": res.costs,
                    "crf_exact": res.crf_exact, "crf_paper": res.crf_paper, "decode_seconds": res.decode_seconds,
                    "prefill_seconds": res.prefill_seconds, "prefill_shared_by": len(runs),
                    "batch_size": res.batch_size, "batch_decode_seconds": res.batch_decode_seconds,
                    "speculation": res.speculation,
                    "exits_off": None if off is None else {  # the same batch decoded with exits off
                        "decode_seconds": off.decode_seconds, "batch_decode_seconds": off.batch_decode_seconds}})

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "threshold": self.threshold, "prune": self.prune,
                "prune_start": self.prune_start,
                "policy": self.decoder.policy, "emission": self.decoder.emission,
                "exits_enabled": self.decoder.exits_enabled, "max_draft": self.decoder.max_draft}
