"""lmms-eval model adapter: any crossgraft LLaVA variant (gated alternating_cross included) on lmms-eval's tasks.

    pip install "crossgraft[lmms-eval]"
    lmms-eval --model crossgraft_llava --model_args pretrained=RUN,batch_size=8 --tasks mme,textvqa_val

crossgraft registers `crossgraft_llava` through lmms-eval's entry-point group `lmms_eval.models` (lmms-eval ≥ 0.7
reads it; see pyproject.toml). Requests are answered the way `crossgraft llava evaluate` answers held-out
records: the Qwen template with the same system prompt, one `<image>` per visual in front of the question
(unless the question places them), KV-cached greedy or sampled decoding, cut at the task's `until` strings.
Videos are not supported (a clear error names the request).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from crossgraft.llava.config import DEFAULT_SYSTEM_PROMPT
from crossgraft.llava.configuration import IGNORE_INDEX, LlavaConfigError
from crossgraft.llava.data import IMAGE_PLACEHOLDER, DataCollatorForSupervisedDataset, generation_prompt, image_inputs
from crossgraft.llava.evaluate import answer_losses
from crossgraft.llava.loading import TORCH_DTYPES, load_model
from crossgraft.llava.processing import ImageProcessor

MODEL_ID = "crossgraft_llava"
DTYPES = {"auto": None, **TORCH_DTYPES}  # lmms-eval's spelling of "as stored"

if TYPE_CHECKING:
    LmmsBase = object
else:
    try:
        from lmms_eval.api.model import lmms as LmmsBase
    except ImportError:  # the adapter also runs without lmms-eval (tests, direct use)
        LmmsBase = object


def manifest() -> Any:
    """lmms-eval's entry point (group `lmms_eval.models`): how it finds `crossgraft_llava`."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest  # type: ignore[import-not-found]
    except ImportError as error:
        raise LlavaConfigError("lmms-eval is not installed: pip install 'crossgraft[lmms-eval]'") from error
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.CrossgraftLlava")


class CrossgraftLlava(LmmsBase):
    """lmms-eval's `lmms` interface (generate_until, loglikelihood) over a crossgraft run."""

    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        attn_implementation: str = "sdpa",
        dtype: str = "auto",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        image_aspect_ratio: str | None = None,
        **unused: Any,
    ) -> None:
        if LmmsBase is not object:
            super().__init__()
        if dtype not in DTYPES:
            raise LlavaConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model = load_model(pretrained, attn_implementation=attn_implementation, dtype=DTYPES[dtype])
        self.model.to(device).eval()  # type: ignore[arg-type]
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.image_processor = ImageProcessor.from_config(self.model.config, image_aspect_ratio)
        self.model.config.update(self.image_processor.config_settings())  # the model merges tiles as they are cut
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = system_prompt
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.collate = DataCollatorForSupervisedDataset(self.pad_token_id)
        self.task_dict: dict[str, Any] = getattr(self, "task_dict", {})

    # ------------------------------------------------------------------------------------------- inputs
    def _visuals(self, request: Any, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list[Image.Image]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        for visual in visuals:
            if not isinstance(visual, Image.Image):
                raise LlavaConfigError(
                    f"{task}/{split} document {doc_id}: crossgraft_llava takes images only, got {type(visual).__name__}"
                )
        return [visual.convert("RGB") for visual in visuals]

    def _item(self, context: str, visuals: list[Image.Image], answer: str | None = None) -> dict[str, Any]:
        if visuals and IMAGE_PLACEHOLDER not in context:
            context = f"{IMAGE_PLACEHOLDER}\n" * len(visuals) + context
        prompt = generation_prompt(context, self.tokenizer, self.system_prompt)
        labels = [IGNORE_INDEX] * len(prompt)
        if answer is not None:
            answer_ids = self.tokenizer(answer, add_special_tokens=False).input_ids
            prompt, labels = prompt + answer_ids, labels + answer_ids
        # several images: one padded tile each, as in LLaVA-NeXT and lmms-eval's OneVision
        images = image_inputs(self.image_processor, visuals)
        return {"input_ids": torch.tensor(prompt), "labels": torch.tensor(labels), **images}

    def _batch(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(items)
        moved = {key: value.to(self.device) for key, value in batch.items() if key != "images"}
        if "images" in batch:
            moved["images"] = [tiles.to(self.device) for tiles in batch["images"]]
        return moved

    # -------------------------------------------------------------------------------------- lmms-eval API
    @torch.no_grad()
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Each request's args: (context, gen_kwargs, doc_to_visual, doc_id, task, split)."""
        answers: list[str] = []
        groups: list[list[Any]] = []
        for request in requests:  # consecutive requests with the same generation settings share a batch
            if groups and len(groups[-1]) < self.batch_size and _same_kwargs(groups[-1][0], request):
                groups[-1].append(request)
            else:
                groups.append([request])
        for group in tqdm(groups, desc="crossgraft_llava", disable=None):
            gen_kwargs = dict(group[0].args[1] or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            items = [self._item(r.args[0], self._visuals(r, *r.args[2:6])) for r in group]
            batch = self._batch(items)
            tokens = self.model.generate(
                batch["input_ids"], batch["attention_mask"], batch.get("images"),
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.pad_token_id,
                do_sample=temperature > 0, temperature=temperature or 1.0,
                top_p=float(gen_kwargs.get("top_p") or 1.0), image_sizes=batch.get("image_sizes"),
            )  # fmt: skip
            for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                answers.append(text.strip())
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """Each request's args: (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split).
        Returns (log-probability of the continuation, whether greedy decoding would produce it)."""
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.batch_size):
            items = []
            for request in requests[start : start + self.batch_size]:
                context, target, doc_to_visual, doc_id, task, split = request.args
                continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                visuals = self._visuals(request, doc_to_visual, doc_id, task, split)
                items.append(self._item(context, visuals, continuation))
            scores = answer_losses(self.model, self._batch(items))
            results += [(-float(nll), bool(greedy)) for nll, greedy in zip(scores.nll_sums, scores.greedy)]
        return results

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("crossgraft_llava answers single-round requests (generate_until)")


def _same_kwargs(a: Any, b: Any) -> bool:
    return json.dumps(a.args[1], sort_keys=True, default=str) == json.dumps(b.args[1], sort_keys=True, default=str)
