"""Interleaved generation with decoding restricted to the requested modality.

    from spiritlm.eval.generate import generate, load_generator
    model, tok = load_model("ckpt/")                        # spiritlm.eval.model
    out = generate(model, tok, [("speech", "a.wav"), ("text", "and then")],
                   output_modality="text", encoder=enc, max_new_tokens=50)
    out[0].content  # 'the dog ran home'

Close to the release's ``Spiritlm.generate(output_modality, interleaved_inputs,
generation_config)``: inputs are ``(kind, content)`` pairs (``GenerationInput``-like objects with
``content``/``content_type`` work too), speech is a wav path, a 16 kHz array, a units dict or a
speech string; the result is a list of :class:`GenerationOutput` (``content``, ``content_type``).
The prompt ends with the marker of ``output_modality`` (``[Text]``/``[Speech]``); "arbitrary"
adds none and lets the model switch.

Decoding: a :class:`ModalityMask` sets every id outside the modality's range to -inf *before*
temperature and top-p (text: the SentencePiece ids minus BOS; speech: the unit ids of the
streams in use, HuBERT only for Base; arbitrary: every real id). EOS is allowed in all modes and
ends generation; padded embedding rows are never sampled.

Bounds: a prompt plus ``max_new_tokens`` never runs past the model's context
(``config.max_position_embeddings``): the budget is clamped to what is left, with one line on
stderr saying so, and a prompt that fills the context alone is refused (:func:`fit_to_context`).
``on_token`` (e.g. a :class:`TokenPrinter`) sees every token as it is sampled, so a caller can
show the output while it is produced.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from spiritlm.text_tokenizer import SpiritTokenizer
from spiritlm.vocab import ids_to_units

MODALITIES = ("text", "speech", "arbitrary")
DEFAULT_MAX_NEW = {"text": 50, "speech": 300, "arbitrary": 300}


@dataclass
class GenerationOutput:
    content: Any  # str for text; units dict (or a waveform when a vocoder is given) for speech
    content_type: str  # "text" | "speech"
    token_ids: list[int] = field(default_factory=list)


def check_sampling(temperature: float, top_p: float, max_new_tokens: int | None) -> None:
    """Refuse sampling settings outside their valid ranges (they would sample garbage silently)."""
    import math
    import operator

    def num(x) -> float:
        try:
            return float(x)
        except (TypeError, ValueError):
            return math.nan

    if not (math.isfinite(num(temperature)) and num(temperature) >= 0):
        raise ValueError(f"temperature={temperature}: use a number >= 0 (0 or --greedy = argmax; the paper's "
                         "STSP uses 0.8)")
    if not 0 < num(top_p) <= 1:
        raise ValueError(f"top_p={top_p}: use a number in (0, 1] (1 = no nucleus cut; the paper uses 0.95)")
    try:
        n_ok = max_new_tokens is None or (not isinstance(max_new_tokens, bool) and operator.index(max_new_tokens) >= 1)
    except TypeError:
        n_ok = False
    if not n_ok:
        raise ValueError(f"max_new_tokens={max_new_tokens}: use an integer >= 1 (defaults: "
                         f"{DEFAULT_MAX_NEW['text']} text, {DEFAULT_MAX_NEW['speech']} speech tokens)")


def model_context(model) -> int | None:
    """The positions the model was built for (``config.max_position_embeddings``; a wrapper's
    ``.lm`` is asked too), or None when it does not say."""
    for m in (model, getattr(model, "lm", None)):
        n = getattr(getattr(m, "config", None), "max_position_embeddings", None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def fit_to_context(model, prompt_lens: Sequence[int], max_new_tokens: int, file=None) -> list[int]:
    """The new-token budget of each prompt so that prompt + new tokens stay within the model's
    context: ``max_new_tokens``, or what the context leaves (one line on stderr when any prompt is
    clamped). A prompt that fills the context on its own is refused (ValueError) before any work."""
    ctx = model_context(model)
    if ctx is None or not prompt_lens:
        return [max_new_tokens] * len(prompt_lens)
    longest = max(prompt_lens)
    if longest >= ctx:
        which = f"prompt {list(prompt_lens).index(longest)} " if len(prompt_lens) > 1 else "the prompt "
        raise ValueError(f"{which}is {longest} tokens and fills the model's context of {ctx} positions "
                         "(max_position_embeddings in its config.json), leaving no room to generate: shorten it "
                         f"to under {ctx} tokens")
    limits = [min(max_new_tokens, ctx - n) for n in prompt_lens]
    clamped = [n for n in limits if n < max_new_tokens]
    if clamped:
        where = "(max_position_embeddings in its config.json)"
        msg = (f"max_new_tokens={max_new_tokens} clamped to {limits[0]}: the {longest}-token prompt leaves only "
               f"{limits[0]} of the model's {ctx} positions {where}" if len(limits) == 1 else
               f"max_new_tokens={max_new_tokens} clamped for {len(clamped)} of {len(limits)} prompts (to as few as "
               f"{min(clamped)}) so that prompt + new tokens fit the model's {ctx} positions {where}")
        print(msg, file=file or sys.stderr, flush=True)
    return limits


class TokenPrinter:
    """``on_token`` callback that prints a generation as it is produced, in the format of
    ``spiritlm generate``: one line per output segment, ``[text] the dog ran`` or ``[speech]
    [Hu3][Hu7]...``. Text is decoded again with the segment's earlier tokens (a piece's leading
    space depends on its neighbour) and a partial UTF-8 character is held back until it completes,
    so the printed line equals ``tokenizer.decode`` of the segment. Call :meth:`close` at the end."""

    def __init__(self, tokenizer: SpiritTokenizer, file=None):
        self.tok, self.file = tokenizer, file
        self.kind: str | None = None  # the segment being printed
        self.ids: list[int] = []
        self.shown = ""

    def _write(self, s: str) -> None:
        f = self.file or sys.stdout
        f.write(s)
        f.flush()

    def __call__(self, t: int) -> None:
        lay = self.tok.layout
        if t in (lay.text_id, lay.speech_id):  # markers switch the kind and are not shown
            return
        k = "text" if t < lay.base_vocab_size else "speech"
        if k != self.kind:
            self.close()
            self._write(f"[{k}] ")
            self.kind, self.ids, self.shown = k, [], ""
        self.ids.append(int(t))
        if k == "speech":
            self._write(self.tok.speech_ids_to_string([t]))
            return
        text = self.tok.decode(self.ids).rstrip("\ufffd")
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self._write(text[len(self.shown):])
            self.shown = text

    def close(self) -> None:
        if self.kind is None:
            return
        if self.kind == "text":
            text = self.tok.decode(self.ids)
            if text.startswith(self.shown):
                self._write(text[len(self.shown):])
        self._write("\n")
        self.kind = None


def vocode_ids(vocoder: Callable, ids: Sequence[int], tok: SpiritTokenizer) -> np.ndarray:
    """Generated speech token ids -> 16 kHz waveform. A :class:`spiritlm.vocoder.Vocoder` (or
    its evaluation hook) is told the units are deduplicated, as every LM output is; any other
    hook gets the units dict (``ids_to_units``: one pitch/style value per HuBERT unit)."""
    units = ids_to_units(list(ids), tok.layout)
    voc = getattr(vocoder, "vocoder", vocoder)
    if hasattr(voc, "decode") and hasattr(voc, "sample_rate"):
        wav, sr = voc.decode(units, deduplicated=True)
        if sr != 16000:
            from spiritlm.audio import resample

            wav = resample(wav, sr, 16000)
        return wav
    return vocoder(units)


def allowed_ids(tok: SpiritTokenizer, modality: str, has_pitch: bool = False, has_style: bool = False):
    """Boolean mask over ``tok.layout.vocab_size`` ids that ``modality`` may emit."""
    lay = tok.layout
    ok = np.zeros(lay.vocab_size, dtype=bool)
    if modality in ("text", "arbitrary"):
        ok[: lay.base_vocab_size] = True
        if tok.bos_id >= 0:
            ok[tok.bos_id] = False
    if modality in ("speech", "arbitrary"):
        streams = ["hubert"] + (["pitch"] if has_pitch else []) + (["style"] if has_style else [])
        for s in streams:
            spec = lay.streams[s]
            ok[spec.offset : spec.offset + spec.size] = True
    if modality == "arbitrary":
        ok[lay.text_id] = ok[lay.speech_id] = True
    if modality not in MODALITIES:
        raise ValueError(f"output_modality={modality!r}: use one of {MODALITIES}")
    if tok.eos_id >= 0:
        ok[tok.eos_id] = True
    return ok


class ModalityMask:
    """logits (.., V) -> disallowed ids at -inf (rows beyond the layout, e.g. padding, too)."""

    def __init__(self, allowed: np.ndarray):
        import torch

        self.allowed = torch.from_numpy(allowed)

    def __call__(self, input_ids, scores):
        import torch

        V = scores.shape[-1]
        mask = torch.zeros(V, dtype=torch.bool, device=scores.device)
        n = min(V, self.allowed.numel())
        mask[:n] = self.allowed[:n].to(scores.device)
        return scores.masked_fill(~mask, float("-inf"))


def _normalise_inputs(inputs) -> list[tuple[str, Any]]:
    out = []
    for x in inputs:
        if isinstance(x, tuple):
            kind, content = x
        else:  # release-style GenerationInput(content=..., content_type=ContentType.SPEECH)
            kind, content = getattr(x.content_type, "value", x.content_type), x.content
        kind = str(kind).lower()
        if kind not in ("text", "speech"):
            raise ValueError(f"input kind {kind!r}: use 'text' or 'speech'")
        out.append((kind, content))
    return out


def sample_tokens(model, prompt: Sequence[int], processor: Callable, max_new_tokens: int,
                  temperature: float = 0.8, top_p: float = 0.95, do_sample: bool = True,
                  eos_id: int = -1, generator=None, stop_ids: Sequence[int] = (),
                  on_token: Callable[[int], Any] | None = None) -> list[int]:
    """KV-cached decoding: mask -> temperature -> top-p -> sample (or argmax). ``eos_id`` and
    the ids in ``stop_ids`` end generation and are not returned; ``on_token`` is called with each
    returned id as soon as it is sampled. ``max_new_tokens`` is taken as given: callers bound it
    with :func:`fit_to_context`."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)
    out_ids: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        past = out.cache
        for _ in range(max_new_tokens):
            logits = processor(ids, out.logits[:, -1, :].float())
            if do_sample and temperature > 0:
                logits = logits / temperature
                probs = torch.softmax(logits, -1)
                if top_p < 1.0:
                    sp, si = torch.sort(probs, descending=True)
                    keep = sp.cumsum(-1) - sp < top_p  # smallest prefix with mass >= top_p
                    keep[..., 0] = True
                    sp = sp * keep
                    probs = torch.zeros_like(probs).scatter(-1, si, sp)
                nxt = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            t = int(nxt.item())
            if t == eos_id or t in stop_ids:
                break
            out_ids.append(t)
            if on_token is not None:
                on_token(t)
            out = model(input_ids=nxt.to(device), cache=past, use_cache=True)
            past = out.cache
    return out_ids


def sample_tokens_batch(model, prompts: Sequence[Sequence[int]], processor: Callable, max_new_tokens: int,
                        temperature: float = 0.8, top_p: float = 0.95, do_sample: bool = True,
                        eos_id: int = -1, generator=None, pad_id: int = 0,
                        stop_ids: Sequence[int] = (), limits: Sequence[int] | None = None) -> list[list[int]]:
    """Like :func:`sample_tokens` for several prompts at once (left padding, one KV cache).
    ``eos_id`` and every id in ``stop_ids`` end a row's generation and are not returned;
    ``limits``: each row's own budget (at most ``max_new_tokens``), e.g. from :func:`fit_to_context`."""
    import torch

    limits = [max_new_tokens] * len(prompts) if limits is None else [min(int(n), max_new_tokens) for n in limits]
    if len(prompts) == 1:
        return [sample_tokens(model, prompts[0], processor, limits[0], temperature, top_p, do_sample,
                              eos_id, generator, stop_ids)]
    stops = {eos_id, *stop_ids}
    device = next(model.parameters()).device
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros(B, L, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(list(p))
        att[b, L - len(p):] = 1
    ids, att = ids.to(device), att.to(device)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    outs: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True)
        past, last_pos = out.cache, pos[:, -1:]
        for _ in range(max(limits)):
            logits = processor(ids, out.logits[:, -1, :].float())
            if do_sample and temperature > 0:
                probs = torch.softmax(logits / temperature, -1)
                if top_p < 1.0:
                    sp, si = torch.sort(probs, descending=True)
                    keep = sp.cumsum(-1) - sp < top_p
                    keep[..., 0] = True
                    probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
                nxt = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            for b in range(B):
                if not done[b]:
                    t = int(nxt[b, 0])
                    if t in stops:
                        done[b] = True
                    else:
                        outs[b].append(t)
                        if len(outs[b]) >= limits[b]:  # this row's budget is spent
                            done[b] = True
            if bool(done.all()):
                break
            att = torch.cat([att, torch.ones(B, 1, dtype=att.dtype, device=device)], 1)
            last_pos = last_pos + 1
            out = model(input_ids=nxt, attention_mask=att, position_ids=last_pos, cache=past, use_cache=True)
            past = out.cache
    return outs


def decode_outputs(tokenizer: SpiritTokenizer, new: Sequence[int], first: str,
                   vocoder: Callable | None = None) -> list[GenerationOutput]:
    outs = []
    for kind, ids in split_segments(tokenizer, new, first):
        if kind == "text":
            outs.append(GenerationOutput(tokenizer.decode(ids), "text", ids))
        else:
            content = vocode_ids(vocoder, ids, tokenizer) if vocoder is not None else ids_to_units(ids, tokenizer.layout)
            outs.append(GenerationOutput(content, "speech", ids))
    return outs


def generate_batch(model, tokenizer: SpiritTokenizer, prompt_ids: Sequence[Sequence[int]],
                   output_modality: str = "text", *, has_pitch: bool = False, has_style: bool = False,
                   max_new_tokens: int | None = None, temperature: float = 0.8, top_p: float = 0.95,
                   do_sample: bool = True, seed: int | None = None, batch_size: int = 16,
                   stop_at_switch: bool = False) -> list[list[GenerationOutput]]:
    """Several prompts (token ids, e.g. from ``encode_segments``) -> one output list per prompt.

    ``stop_at_switch``: the other modality's marker (``[Speech]`` when generating text) may be
    chosen and ends that output, as EOS does. Few-shot prompts need it: every shot's answer is
    followed by the next shot's marker, so the marker is where the model says its answer ends;
    masked out, the model can only run on to ``max_new_tokens``."""
    import torch

    check_sampling(temperature, top_p, max_new_tokens)
    allowed = allowed_ids(tokenizer, output_modality, has_pitch, has_style)
    stop_ids: list[int] = []
    if stop_at_switch:
        if output_modality == "arbitrary":
            raise ValueError("stop_at_switch needs output_modality 'text' or 'speech'")
        stop_ids = [tokenizer.layout.speech_id if output_modality == "text" else tokenizer.layout.text_id]
        allowed[stop_ids] = True
    mask = ModalityMask(allowed)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    n = max_new_tokens or DEFAULT_MAX_NEW[output_modality]
    limits = fit_to_context(model, [len(p) for p in prompt_ids], n)  # every prompt checked before any work
    res = []
    for i in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[i : i + batch_size]
        news = sample_tokens_batch(model, chunk, mask, n, temperature, top_p, do_sample, tokenizer.eos_id, gen,
                                   pad_id=max(tokenizer.eos_id, 0), stop_ids=stop_ids,
                                   limits=limits[i : i + batch_size])
        for p, new in zip(chunk, news):
            first = output_modality if output_modality != "arbitrary" else _last_kind(tokenizer, p)
            res.append(decode_outputs(tokenizer, new, first))
    return res


def split_segments(tok: SpiritTokenizer, ids: Sequence[int], first: str) -> list[tuple[str, list[int]]]:
    """Generated ids -> [(kind, ids)] runs; markers switch the kind and are dropped."""
    lay = tok.layout
    segs: list[tuple[str, list[int]]] = []
    kind = first
    for i in ids:
        if i in (lay.text_id, lay.speech_id):
            kind = "text" if i == lay.text_id else "speech"
            continue
        k = "text" if i < lay.base_vocab_size else "speech"
        if not segs or segs[-1][0] != k:
            segs.append((k, []))
        segs[-1][1].append(int(i))
    return segs


def generate(model, tokenizer: SpiritTokenizer, interleaved_inputs, output_modality: str = "text", *,
             encoder=None, vocoder: Callable | None = None, has_pitch: bool = False, has_style: bool = False,
             max_new_tokens: int | None = None, temperature: float = 0.8, top_p: float = 0.95,
             do_sample: bool = True, seed: int | None = None, prompt_ids: Sequence[int] | None = None,
             on_token: Callable[[int], Any] | None = None) -> list[GenerationOutput]:
    """One prompt -> its outputs. The budget (``max_new_tokens``, default per modality) is clamped
    to what the model's context leaves after the prompt, with one line on stderr; a prompt that
    fills the context is refused. ``on_token``: called with each generated id as it is sampled
    (markers included), e.g. :class:`TokenPrinter` to print the output while it is produced."""
    import torch

    if output_modality not in MODALITIES:
        raise ValueError(f"output_modality={output_modality!r}: use one of {MODALITIES}")
    check_sampling(temperature, top_p, max_new_tokens)
    if prompt_ids is None:
        segs = []
        for kind, content in _normalise_inputs(interleaved_inputs):
            if kind == "speech" and not isinstance(content, dict) and not (
                    isinstance(content, str) and content.startswith("[")):
                if encoder is None:
                    raise ValueError("a speech input is a wav but no speech encoder was given; pass "
                                     "encoder= (e.g. SpeechTokenizer(...)) or units")
                content = encoder(content)
            segs.append((kind, content))
        trailing = None if output_modality == "arbitrary" else output_modality
        prompt_ids = tokenizer.encode_segments(segs, has_pitch=has_pitch, has_style=has_style,
                                               trailing_marker=trailing)
    mask = ModalityMask(allowed_ids(tokenizer, output_modality, has_pitch, has_style))
    (n,) = fit_to_context(model, [len(prompt_ids)], max_new_tokens or DEFAULT_MAX_NEW[output_modality])
    gen = None
    if seed is not None:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    new = sample_tokens(model, prompt_ids, mask, n, temperature, top_p, do_sample, tokenizer.eos_id, gen,
                        on_token=on_token)
    first = output_modality if output_modality != "arbitrary" else _last_kind(tokenizer, prompt_ids)
    return decode_outputs(tokenizer, new, first, vocoder)


def _last_kind(tok: SpiritTokenizer, ids: Sequence[int]) -> str:
    for i in reversed(list(ids)):
        if i == tok.layout.text_id or i < tok.layout.base_vocab_size:
            return "text"
        if i >= tok.layout.base_vocab_size:
            return "speech"
    return "text"


def output_text(outs: list[GenerationOutput]) -> str:
    return " ".join(o.content for o in outs if o.content_type == "text").strip()


def output_speech_ids(outs: list[GenerationOutput]) -> list[int]:
    return [i for o in outs if o.content_type == "speech" for i in o.token_ids]
