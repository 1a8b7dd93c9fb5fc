"""A conformer that runs chunk by chunk with bounded left context (issue 22, deliverable 4).

:class:`ChunkedConformerEncoder` has exactly the parameters (and state-dict keys) of
:class:`~spiritlm.models.continuous.encoders.ConformerEncoder`, so either loads the other's
checkpoint, but computes every frame from the past and its own chunk only:

* encoder frames are cut into chunks of ``chunk_frames`` (40 ms frames at the default hop 10 ms x
  subsample 4); a frame attends to every frame of its chunk and of the ``left_chunks`` chunks
  before it (a chunked attention mask; inside a chunk attention is bidirectional, so the lookahead
  is bounded by the chunk);
* the depthwise conv of every block is **causal** (left-padded with K - 1 frames; its streaming
  state is the last K - 1 frames), and so are the stride-2 subsampling convs (left-padded by 2,
  same weights), so nothing reaches past the chunk;
* filterbank normalisation: per-utterance mean/variance cannot be streamed, so each chunk's
  filterbank frames are normalised with the mean/std of all frames up to the end of that chunk
  (running sums; the same std floor of 1 as the full-context encoder);
* positions: sinusoids of the frame's offset inside its chunk, not of its absolute index: a model
  trained on 10-s utterances never meets a position it has not seen on 100-s audio.

Two ways to run it, equal to ~1e-5 (tested):

* ``forward(wavs) -> (x_BTD, lens_B)`` / ``forward_padded``: the whole sequence under the chunk
  mask (training: differentiable, the CTC head and the LM train through it);
* ``state = enc.stream_state(); enc.stream_step(state, samples)`` -> the frames of every chunk
  completed by these samples, ``enc.stream_flush(state)`` -> the last, partial chunk. The state
  holds at most ``left_chunks`` chunks of keys/values per layer, K - 1 conv frames per layer, the
  subsampling convs' last 2 inputs and the unread samples: memory is flat in the audio's length.

Latency: a chunk's frames come out once the chunk's last sample arrived (plus the 15 ms of the
25-ms filterbank window that reaches past a 10-ms hop), i.e. ``chunk_frames * 40 ms`` at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spiritlm.config import ConfigError
from spiritlm.models.continuous.config import ConformerConfig
from spiritlm.models.continuous.encoders import ConformerBlock, ConformerEncoder, _pad_wavs, _sinusoids, pad_frames
from spiritlm.models.continuous.projectors import valid_mask


def chunk_mask_TT(T: int, chunk: int, left_chunks: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where query frame i may attend key frame j: same chunk or one of the
    ``left_chunks`` chunks before it (``left_chunks < 0``: all previous chunks)."""
    c = torch.arange(T, device=device) // chunk
    d = c[:, None] - c[None, :]
    ok = d >= 0
    return ok & (d <= left_chunks) if left_chunks >= 0 else ok


def _attn_qkv(blk: ConformerBlock, h_BTD: torch.Tensor):
    """The block's ``nn.MultiheadAttention`` input projection, split into heads: (B, H, T, d)."""
    a = blk.attn
    q, k, v = F.linear(h_BTD, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
    B, T, D = h_BTD.shape
    H = a.num_heads
    return [t.reshape(B, T, H, D // H).transpose(1, 2) for t in (q, k, v)]


def _attn_out(blk: ConformerBlock, o_BHTd: torch.Tensor) -> torch.Tensor:
    B, H, T, d = o_BHTd.shape
    return blk.attn.out_proj(o_BHTd.transpose(1, 2).reshape(B, T, H * d))


def _causal_dw(blk: ConformerBlock, y_BTD: torch.Tensor, left_BKD: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise conv over ``y`` with K - 1 frames of left context (zeros, or the stream's state)."""
    dw = blk.conv.dw
    K = dw.kernel_size[0]
    if left_BKD is None:
        left_BKD = y_BTD.new_zeros(y_BTD.shape[0], K - 1, y_BTD.shape[2])
    x = torch.cat([left_BKD, y_BTD], 1).transpose(1, 2)
    return F.conv1d(x, dw.weight, dw.bias, groups=dw.groups).transpose(1, 2)


@dataclass
class EncoderStream:
    """What :meth:`ChunkedConformerEncoder.stream_step` keeps between calls (bounded)."""

    pending: torch.Tensor  # samples not yet turned into a whole chunk (< one chunk + 400)
    mel_done: int = 0  # filterbank frames consumed so far
    frames_out: int = 0  # encoder frames emitted so far
    norm_sum: torch.Tensor | None = None  # float64 running sums for the normalisation
    norm_sq: torch.Tensor | None = None
    norm_n: int = 0
    sub_tail: list = field(default_factory=list)  # per subsampling conv: its last 2 inputs (2, C)
    kv: list = field(default_factory=list)  # per block: (K_HTd, V_HTd) of the last left_chunks chunks
    conv: list = field(default_factory=list)  # per block: last K - 1 frames into the depthwise conv
    closed: bool = False

    def nbytes(self) -> int:
        """Bytes of every tensor the stream holds between calls (flat in the audio's length)."""
        ts = [self.pending, self.norm_sum, self.norm_sq, *self.sub_tail, *self.conv]
        ts += [t for kv in self.kv if kv is not None for t in kv]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def cache_frames(self) -> int:
        """Encoder frames held in the key/value caches (per layer): bounded by left_chunks x chunk."""
        return int(self.kv[0][0].shape[-2]) if self.kv and self.kv[0] is not None else 0


class ChunkedConformerEncoder(ConformerEncoder):
    """See the module docstring. ``chunk_frames``: encoder frames per chunk; ``left_chunks``:
    chunks of left context each frame attends to (-1: unbounded, i.e. causal at chunk level)."""

    def __init__(self, c: ConformerConfig, chunk_frames: int = 8, left_chunks: int = 4):
        super().__init__(c)
        if chunk_frames < 1:
            raise ConfigError(f"chunk_frames={chunk_frames}: a chunk holds at least one encoder frame")
        if left_chunks < 0:
            raise ConfigError(f"left_chunks={left_chunks}: streaming needs a bounded left context (0 or more "
                              "chunks); use the full-context ConformerEncoder for unbounded context")
        self.chunk_frames, self.left_chunks = int(chunk_frames), int(left_chunks)
        self.mel_per_frame = c.subsample  # filterbank frames per encoder frame
        self.chunk_s = chunk_frames / self.frame_rate

    def chunk_samples(self) -> int:
        """Samples per chunk (the filterbank hop times its frames)."""
        return self.chunk_frames * self.mel_per_frame * self.mel.hop

    # ---- the whole sequence under the chunk mask ------------------------------------------------
    def _normalise(self, x_BTM: torch.Tensor, n_B: torch.Tensor) -> torch.Tensor:
        """Each filterbank chunk by the mean/std of every frame up to the end of its chunk."""
        B, T, M = x_BTM.shape
        ok = valid_mask(n_B, T)[..., None]
        xd = x_BTM.double() * ok
        s1, s2 = xd.cumsum(1), (xd * xd).cumsum(1)
        cnt = ok.double().cumsum(1)
        span = self.chunk_frames * self.mel_per_frame
        end = torch.clamp((torch.arange(T, device=x_BTM.device) // span + 1) * span, max=T) - 1  # chunk's last frame
        s1, s2, cnt = s1[:, end], s2[:, end], cnt[:, end].clamp(min=1)
        mean = s1 / cnt
        std = (s2 / cnt - mean * mean).clamp(min=0).sqrt().clamp(min=1.0)
        return ((xd - mean) / std * ok).to(x_BTM.dtype)

    def _subsample(self, x_BTC: torch.Tensor, n_B: torch.Tensor):
        for conv in self.convs:  # causal: output j reads inputs 2j-2, 2j-1, 2j (zeros before 0)
            x = F.conv1d(F.pad(x_BTC.transpose(1, 2), (2, 0)), conv.weight, conv.bias, stride=2)
            x_BTC = F.gelu(x).transpose(1, 2)
            n_B = (n_B + 1) // 2
            x_BTC = x_BTC * valid_mask(n_B, x_BTC.shape[1])[..., None].to(x_BTC.dtype)
        return x_BTC, n_B

    def _positions(self, start: int, T: int, device) -> torch.Tensor:
        pe = _sinusoids(self.chunk_frames, self.dim, device)
        return pe[(torch.arange(start, start + T, device=device) % self.chunk_frames)]

    def forward_padded(self, wav_BS: torch.Tensor, lens_B: torch.Tensor):
        x, n = self.mel(wav_BS, lens_B)
        x = self._normalise(x, n).to(self.inp.weight.dtype)
        x, n = self._subsample(x, n)
        x = self.inp(x)
        T = x.shape[1]
        x = x + self._positions(0, T, x.device).to(x.dtype)
        ok_BT = valid_mask(n, T)
        allowed_BTT = chunk_mask_TT(T, self.chunk_frames, self.left_chunks, x.device)[None] & ok_BT[:, None, :]
        allowed_BTT = allowed_BTT | torch.eye(T, dtype=torch.bool, device=x.device)[None]  # padding rows: no NaN
        for blk in self.blocks:
            x = self._block(blk, x, ok_BT, allowed_BTT) * ok_BT[..., None].to(x.dtype)
        return x, n

    def _block(self, blk: ConformerBlock, x, ok_BT, allowed_BTT):
        x = x + 0.5 * blk.ff1(x)
        q, k, v = _attn_qkv(blk, blk.attn_norm(x))
        p = blk.attn.dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_BTT[:, None], dropout_p=p)
        x = x + _attn_out(blk, o)
        cm = blk.conv
        y = F.glu(cm.pw1(cm.norm(x)), dim=-1) * ok_BT[..., None].to(x.dtype)
        x = x + cm.drop(cm.pw2(F.silu(cm.norm2(_causal_dw(blk, y)))))
        return blk.out_norm(x + 0.5 * blk.ff2(x))

    # ---- streaming ------------------------------------------------------------------------------
    def stream_state(self) -> EncoderStream:
        p = next(self.parameters())
        return EncoderStream(pending=torch.zeros(0, dtype=torch.float32, device=p.device))

    @torch.no_grad()
    def stream_step(self, st: EncoderStream, samples) -> torch.Tensor:
        """Append ``samples`` (1-D float, 16 kHz) -> (T_new, D) frames of the chunks they completed
        (T_new is a multiple of ``chunk_frames``, possibly 0)."""
        if st.closed:
            raise ValueError("this encoder stream was flushed; start a new one with stream_state()")
        if self.training:
            raise ValueError("stream_step runs the encoder for inference: call .eval() first (dropout)")
        s = torch.as_tensor(np.asarray(samples, dtype=np.float32), device=st.pending.device).reshape(-1)
        st.pending = torch.cat([st.pending, s])
        span = self.chunk_frames * self.mel_per_frame  # filterbank frames per chunk
        need = (span - 1) * self.mel.hop + self.mel.win  # samples a whole chunk's filterbanks read
        outs = []
        while st.pending.numel() >= need:
            outs.append(self._chunk(st, st.pending[:need], span))
            st.pending = st.pending[span * self.mel.hop:]
        return torch.cat(outs) if outs else self._empty()

    @torch.no_grad()
    def stream_flush(self, st: EncoderStream) -> torch.Tensor:
        """The end of the audio: the frames of the last, partial chunk (possibly none)."""
        if st.closed:
            return self._empty()
        st.closed = True
        m = int(self.mel.num_frames(st.pending.numel()))
        if m == 0:
            return self._empty()
        return self._chunk(st, st.pending, m)

    def _empty(self) -> torch.Tensor:
        p = next(self.parameters())
        return torch.zeros(0, self.dim, dtype=p.dtype, device=p.device)

    def _chunk(self, st: EncoderStream, wav_S: torch.Tensor, m: int) -> torch.Tensor:
        """``m`` filterbank frames read from ``wav_S`` (<= one chunk) through the cached network."""
        mel, _ = self.mel(wav_S[None], torch.tensor([wav_S.numel()], device=wav_S.device))
        mel = mel[0, :m]
        md = mel.double()
        if st.norm_sum is None:
            st.norm_sum, st.norm_sq = md.new_zeros(md.shape[1]), md.new_zeros(md.shape[1])
        st.norm_sum += md.sum(0)
        st.norm_sq += (md * md).sum(0)
        st.norm_n += m
        mean = st.norm_sum / st.norm_n
        std = (st.norm_sq / st.norm_n - mean * mean).clamp(min=0).sqrt().clamp(min=1.0)
        x = ((md - mean) / std).to(mel.dtype).to(self.inp.weight.dtype)
        st.mel_done += m
        # subsampling convs, causal, with the last 2 inputs of each level as left context
        if not st.sub_tail:
            st.sub_tail = [x.new_zeros(2, x.shape[1])] + [x.new_zeros(2, self.dim) for _ in self.convs[1:]]
        for i, conv in enumerate(self.convs):
            buf = torch.cat([st.sub_tail[i], x])
            st.sub_tail[i] = buf[-2:]
            y = F.conv1d(buf.T[None], conv.weight, conv.bias, stride=2)[0].T
            x = F.gelu(y)
        x = self.inp(x)[None]  # (1, T, D)
        T = x.shape[1]
        x = x + self._positions(st.frames_out, T, x.device).to(x.dtype)
        if not st.kv:
            st.kv = [None] * len(self.blocks)
            st.conv = [None] * len(self.blocks)
        keep = self.left_chunks * self.chunk_frames
        for i, blk in enumerate(self.blocks):
            x = x + 0.5 * blk.ff1(x)
            q, k, v = _attn_qkv(blk, blk.attn_norm(x))
            if st.kv[i] is not None:
                k, v = torch.cat([st.kv[i][0], k], 2), torch.cat([st.kv[i][1], v], 2)
            x = x + _attn_out(blk, F.scaled_dot_product_attention(q, k, v))
            drop = max(0, k.shape[2] - keep)  # the oldest chunk leaves once left_chunks are held
            st.kv[i] = (k[:, :, drop:], v[:, :, drop:]) if keep else None
            cm = blk.conv
            y = F.glu(cm.pw1(cm.norm(x)), dim=-1)
            K = cm.dw.kernel_size[0]
            left = st.conv[i] if st.conv[i] is not None else y.new_zeros(1, K - 1, y.shape[2])
            x = x + cm.pw2(F.silu(cm.norm2(_causal_dw(blk, y, left))))
            st.conv[i] = torch.cat([left, y], 1)[:, -(K - 1):] if K > 1 else left
            x = blk.out_norm(x + 0.5 * blk.ff2(x))
        st.frames_out += T
        return x[0]


def stream_all(enc: ChunkedConformerEncoder, wav, piece: int = 1234) -> torch.Tensor:
    """Convenience: feed ``wav`` in pieces of ``piece`` samples, flush -> (T, D) (tests, bench)."""
    st = enc.stream_state()
    wav = np.asarray(wav, dtype=np.float32)
    outs = [enc.stream_step(st, wav[i:i + piece]) for i in range(0, len(wav), piece)]
    outs.append(enc.stream_flush(st))
    return torch.cat(outs)


def full_frames(enc: ChunkedConformerEncoder, wav) -> torch.Tensor:
    """The whole-sequence forward of one waveform -> (T, D)."""
    with torch.no_grad():
        x, n = enc.forward_padded(*_pad_wavs([wav], next(enc.parameters()).device))
    return x[0, : int(n[0])]


# ---- distillation from the full-context conformer ----------------------------------------------------
@dataclass
class DistillConfig:
    """``spiritlm streaming distill [RECIPE] --set key=value``.

    The chunked student starts from the full-context teacher's weights (same parameters) and
    learns to reproduce its output frames (MSE over valid frames, relative to the teacher's frame
    variance) on the manifest's ``split``: a streaming model trained on the teacher's frames then
    runs on the student unchanged, and the WER gap between the two is the chunked encoder's cost."""

    teacher: str = ""  # an export dir with encoder.safetensors + continuous.json (its conformer settings)
    manifest: str = ""  # data-stage manifest (JSON Lines: audio_path + split)
    split: str = "train"
    heldout_split: str = "heldout"  # the relative frame error reported on it before and after
    out: str = ""  # student: encoder.safetensors + distill.json
    chunk_frames: list[int] = field(default_factory=lambda: [32])  # one drawn per step (dynamic chunks)
    left_chunks: int = 1
    steps: int = 300
    batch: int = 8
    lr: float = 5e-4
    max_audio_s: float = 20.0
    heldout_max: int = 24  # held-out utterances scored (the first N)
    seed: int = 0


def _conformer_config(export: Path) -> ConformerConfig:
    import json

    from spiritlm.config import from_dict

    f = export / "continuous.json"
    if not f.is_file() or not (export / "encoder.safetensors").is_file():
        raise ConfigError(f"{export}: needs continuous.json + encoder.safetensors (the export of a conformer "
                          "model, e.g. runs/streaming_ctc_demo/hf)")
    enc = json.loads(f.read_text())["continuous"]["encoder"]
    if enc.get("kind", "conformer") != "conformer":
        raise ConfigError(f"{export}: its encoder is {enc.get('kind')!r}, not the conformer")
    return from_dict(ConformerConfig, enc.get("conformer", {}), "continuous.encoder.conformer")


def _relative_error(student, teacher, wavs) -> float:
    """sum |s - t|^2 / sum |t - mean t|^2 over every valid frame (0 = identical frames)."""
    num = den = 0.0
    with torch.no_grad():
        for i in range(0, len(wavs), 8):
            s, n = student(wavs[i:i + 8])
            t, _ = teacher(wavs[i:i + 8])
            ok = valid_mask(n, s.shape[1])[..., None]
            tv = t[ok.expand_as(t)].reshape(-1, t.shape[-1])
            num += float(((s - t) ** 2 * ok).sum())
            den += float(((tv - tv.mean(0)) ** 2).sum())
    return num / max(den, 1e-12)


def distill(cfg: DistillConfig, progress: bool = True) -> dict:
    import json
    import random

    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from spiritlm.data.encoders import read_audio
    from spiritlm.manifest import read_manifest

    if not cfg.teacher or not cfg.manifest or not cfg.out:
        raise ConfigError("distill needs teacher=<export dir>, manifest=<manifest.jsonl> and out=<dir>")
    if not cfg.chunk_frames or min(cfg.chunk_frames) < 1:
        raise ConfigError(f"chunk_frames={cfg.chunk_frames}: list one or more chunk sizes (encoder frames)")
    teacher_dir, out = Path(cfg.teacher), Path(cfg.out)
    c = _conformer_config(teacher_dir)
    state = load_file(teacher_dir / "encoder.safetensors")
    teacher = ConformerEncoder(c)
    teacher.load_state_dict(state)
    teacher.requires_grad_(False).eval()
    torch.manual_seed(cfg.seed)
    student = ChunkedConformerEncoder(c, chunk_frames=cfg.chunk_frames[0], left_chunks=cfg.left_chunks)
    student.load_state_dict(state)
    m = Path(cfg.manifest)
    utts = [u for u in read_manifest(m) if u.duration <= cfg.max_audio_s]
    train = [read_audio(u.audio_file(m.parent)) for u in utts if u.split == cfg.split]
    held = [read_audio(u.audio_file(m.parent)) for u in utts if u.split == cfg.heldout_split][: cfg.heldout_max]
    if not train:
        raise ConfigError(f"{m}: no utterance of split {cfg.split!r} up to {cfg.max_audio_s} s")
    before = {k: _relative_error(_at(student, k).eval(), teacher, held) for k in cfg.chunk_frames} if held else {}
    # the teacher's frames once per utterance (a quarter of a step's cost otherwise), batched by length
    targets: list[torch.Tensor] = [None] * len(train)  # type: ignore[list-item]
    order = sorted(range(len(train)), key=lambda i: len(train[i]))
    with torch.no_grad():
        for j in tqdm(range(0, len(order), 8), desc="teacher frames", disable=not progress):
            idx = order[j:j + 8]
            t, n = teacher([train[i] for i in idx])
            for i, row, k in zip(idx, t, n.tolist()):
                targets[i] = row[:k].clone()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    rng = random.Random(cfg.seed)
    losses = []
    student.train()
    for step in tqdm(range(cfg.steps), desc="distil chunked encoder", disable=not progress):
        _at(student, rng.choice(cfg.chunk_frames))
        pick = [rng.randrange(len(train)) for _ in range(cfg.batch)]
        t, n = pad_frames([targets[i] for i in pick])
        s, _ = student([train[i] for i in pick])
        ok = valid_mask(n, t.shape[1])[..., None].to(t.dtype)
        var = (((t - (t * ok).sum((0, 1)) / ok.sum()) ** 2) * ok).sum() / ok.sum()
        loss = (((s - t) ** 2) * ok).sum() / ok.sum() / var.clamp(min=1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    student.eval()
    after = {k: _relative_error(_at(student, k), teacher, held) for k in cfg.chunk_frames} if held else {}
    out.mkdir(parents=True, exist_ok=True)
    _at(student, cfg.chunk_frames[0])
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, out / "encoder.safetensors")
    from spiritlm.config import to_dict

    report = {"config": to_dict(cfg), "heldout_relative_error_before": before, "heldout_relative_error_after": after,
              "loss_first10": sum(losses[:10]) / max(len(losses[:10]), 1), "loss_last10": sum(losses[-10:]) / max(len(losses[-10:]), 1),
              "train_utterances": len(train), "heldout_utterances": len(held)}
    (out / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _at(enc: ChunkedConformerEncoder, chunk_frames: int) -> ChunkedConformerEncoder:
    enc.chunk_frames = int(chunk_frames)
    enc.chunk_s = chunk_frames / enc.frame_rate
    return enc


def export_chunked(model_dir: str | Path, student_dir: str | Path, out: str | Path, left_chunks: int | None = None) -> Path:
    """A copy of a streaming model export whose encoder is the distilled chunked student
    (``streaming.encoder = "chunked"``): ``load_streaming(out)`` streams end to end."""
    import json
    import shutil

    from spiritlm.models.streaming.model import STREAMING_FILE, export_dir

    src, student, out = export_dir(model_dir), Path(student_dir), Path(out)
    info = json.loads((student / "distill.json").read_text())["config"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.copy(student / "encoder.safetensors", tmp / "encoder.safetensors")
    s = json.loads((tmp / STREAMING_FILE).read_text())
    s["streaming"]["encoder"] = "chunked"
    s["streaming"]["encoder_left_chunks"] = int(info["left_chunks"] if left_chunks is None else left_chunks)
    (tmp / STREAMING_FILE).write_text(json.dumps(s, indent=2) + "\n")
    (tmp / "chunked_encoder.json").write_text(json.dumps({"from_model": str(src), "student": str(student),
                                                          "distill": info}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
