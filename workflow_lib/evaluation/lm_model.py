"""The early-exit model as an lm-eval model, registered as `dynamax`.

A subclass of lm-eval's own `HFLM`, so tokenisation, context truncation, stop-sequence handling and the
loglikelihood paths are lm-eval's, unchanged. What differs:
- `generate_until` decodes `batch_size` requests at a time with `ExitDecoder.generate_batch` (every row exits
  on its own decision and gets what batch size 1 gives it) and cuts the text at the stop strings itself,
  exactly as HFLM does; it keeps one statistics entry per request (tokens, exit layers, stop reason, costs,
  timings, its batch) in `self.generations` for the run record; `batch_size` covers loglikelihood and generation;
- `loglikelihood` / `loglikelihood_rolling` run the full model, or the pruned one when prune > 0;
- `emission` (last_block | lens | translator, decoding/core.py) says how an exit turns its hidden state into the
  token; the `translator` rule reads the tuned-lens translators in the folder `translators` (save_translators);
- `oracle_exits` replaces the heads by the oracle bound (decoding/decoder.py), decoded `batch_size` at a time too;
- `share_thresholds(ts)`: a job that evaluates several thresholds decodes each batch of requests at all of them
  from one prefill (`generate_batch_thresholds`); a later point at one of them replays its stored generations;
- `max_draft` (and `draft_vocab`, a JSON file of token ids) makes the exits draft and the full model verify
  (decoding/speculative.py): each batch is then also decoded with exits off from the same prefill, in alternating
  order, its time kept beside the speculative one (the measured speedup, paired batch for batch), and a request whose
  tokens differ from the exits-off ones stops the run, naming its question.

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
from pathlib import Path

import lm_eval.models  # noqa: F401  (registers the built-in models first; see docs/architecture.md)
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.decoding.pruning import pruned_logits
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
        head_modules = None
        if _none(heads) is not None:
            head_modules, self.heads_meta = load_heads(heads, backbone_config=model.config, device=model.device,
                                                       dtype=model.dtype)  # refuses heads of another backbone
            head_modules.eval()
        else:
            self.heads_meta = None
        self.emission = _none(emission) or "last_block"
        self.translators, self.translators_meta = None, None
        if _none(translators) is not None:  # refuses translators of another backbone; the decoder checks the rule
            self.translators, self.translators_meta = load_translators(translators, backbone_config=model.config,
                                                                       device=model.device, dtype=model.dtype)
        tok_source = _none(tokenizer) or str(backbone)
        try:
            tok = load_tokenizer(tok_source)
        except (OSError, ValueError) as e:
            raise ValueError(f"no tokenizer at {tok_source!r} (pass tokenizer=PATH in model_args): {e}") from None
        super().__init__(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length, **kwargs)
        self.head_modules = head_modules
        self.policy = _none(policy)
        self.repetition_penalty = float(repetition_penalty)
        self.generations: list[dict] = []
        self._shared: list[float] = []  # thresholds decoded together (share_thresholds)
        # (threshold, prune, prune_start, prompt, gen kwargs) -> (text, statistics), until its point replays it
        self._stored: dict[tuple, tuple[str, dict]] = {}
        oracle_exits = _none(oracle_exits)
        if isinstance(oracle_exits, str):  # model_args: 'oracle_exits=2;3;4' (commas separate model_args)
            oracle_exits = [int(x) for x in oracle_exits.replace(";", " ").split()]
        self.oracle_exits = oracle_exits
        self.max_draft = None if _none(max_draft) is None else int(max_draft)
        self.draft_vocab = None if _none(draft_vocab) is None else read_draft_vocab(str(draft_vocab))
        prune_start = _none(prune_start)
        self.set_point(float(threshold), int(prune), None if prune_start is None else int(prune_start))

    def set_point(self, threshold: float, prune: int = 0, prune_start: int | None = None) -> None:
        """Move to another grid point without reloading the model (one job evaluates many thresholds); prune_start:
        the first of the `prune` dropped blocks (None: the ones just before the last)."""
        self.threshold, self.prune = threshold, prune
        self._batches = 0
        self.decoder = ExitDecoder(self.model, self.head_modules, threshold, self.policy, prune,
                                   repetition_penalty=self.repetition_penalty, prune_start=prune_start,
                                   oracle_exits=self.oracle_exits, emission=self.emission,
                                   translators=self.translators, max_draft=self.max_draft,
                                   draft_vocab=self.draft_vocab)
        self.prune_start = self.decoder.prune_start
        self.generations = []

    def share_thresholds(self, thresholds: list[float]) -> None:
        """Decode every batch at all these thresholds at once (one prefill) while the point is one of them, the
        exits are on and nothing is pruned; the other thresholds' generations wait in memory for their point."""
        self._shared = sorted({float(t) for t in thresholds if 0 <= float(t) <= 1})
        self._stored = {}

    def _sharing(self, keys: list[tuple]) -> list[float]:
        """The thresholds to decode these requests at: the point's, and the shared ones they are not stored for."""
        if self.threshold not in self._shared or self.prune or self.oracle_exits or not self.decoder.exits_enabled:
            return [self.threshold]
        return [self.threshold] + [t for t in self._shared if t != self.threshold
                                   and not all(self._key(t, key) in self._stored for key in keys)]

    def _key(self, threshold: float, request_key: tuple) -> tuple:
        return (threshold, self.prune, self.prune_start, *request_key)

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
        and decoded `batch_size` at a time with `ExitDecoder.generate_batch`, each row exiting on its own decision;
        every prompt is encoded (and truncated) alone, exactly as at batch size 1."""
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
            if not all(self._key(self.threshold, key) in self._stored for key in keys):
                prompts = [self.tok_batch_encode([req.args[0]], left_truncate_len=self.max_length - max_gen_toks,
                                                 truncation=self.truncation)[0][0].tolist() for req in chunk]  # as HFLM
                thresholds = self._sharing(keys)
                # speculative: exits off on the same prefill too, before or after by turns (a paired time, a check)
                paired = (("before", "after")[batch_id % 2]
                          if self.decoder.max_draft is not None and self.decoder.exits_enabled else None)
                with torch.no_grad():
                    runs = self.decoder.generate_batch_thresholds(
                        prompts, thresholds, max_new_tokens=max_gen_toks, stop_strings=until,
                        tokenizer=self.tokenizer, eos_token_id=self.eot_token_id, paired=paired)
                reference = runs.pop() if paired else None
                for threshold, results in zip(thresholds, runs):
                    for i, (req, key, ids, res) in enumerate(zip(chunk, keys, prompts, results)):
                        if reference is not None and res.token_ids != reference[i].token_ids:
                            raise ValueError(f"speculative decoding changed the answer to {describe(req)} at "
                                             f"threshold {threshold}: {res.token_ids} instead of the full model's "
                                             f"{reference[i].token_ids}")
                        text = postprocess_generated_text(self.tok_decode(res.token_ids), until, None)
                        self._stored[self._key(threshold, key)] = (text, {  # identical requests decode identically
                            "prompt_tokens": len(ids),
                            "max_new_tokens": max_gen_toks, "token_ids": res.token_ids,
                            "exit_layers": res.exit_layers, "stop_reason": res.stop_reason, "costs": res.costs,
                            "crf_exact": res.crf_exact, "crf_paper": res.crf_paper,
                            "decode_seconds": res.decode_seconds, "prefill_seconds": res.prefill_seconds,
                            "prefill_shared_by": len(thresholds), "batch_size": res.batch_size,
                            "batch_decode_seconds": res.batch_decode_seconds, "speculation": res.speculation,
                            "exits_off": None if reference is None else {  # the same batch decoded with exits off
                                "decode_seconds": reference[i].decode_seconds,
                                "batch_decode_seconds": reference[i].batch_decode_seconds}})
            for req, key in zip(chunk, keys):
                text, stat = self._stored[self._key(self.threshold, key)]
                stats.append({"task": req.task_name, "doc_id": req.doc_id, **stat, "batch_id": batch_id})
                self.cache_hook.add_partial("generate_until", req.args, text)
                texts.append(text)
            pbar.update(len(chunk))
        pbar.close()
        done = self._key(self.threshold, ())
        self._stored = {k: v for k, v in self._stored.items() if k[:len(done)] != done}  # replayed
        self.generations.extend(collator.get_original(stats))
        return collator.get_original(texts)

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "threshold": self.threshold, "prune": self.prune,
                "prune_start": self.prune_start,
                "policy": self.decoder.policy, "emission": self.decoder.emission,
                "exits_enabled": self.decoder.exits_enabled, "max_draft": self.decoder.max_draft}
