"""A fifth model family defined in this file alone (issue 31): registered through a ``ModelSpec``,
trained two steps with `spiritlm train`, exported, recognised in its export and evaluated with
`spiritlm eval` -- touching no module of the package. If this needs an edit in the trainer, the
suite or the CLI, the registry seam is broken.

The family is a character bigram LM (an embedding and a linear head): the smallest model that
trains with next-token loss and scores text continuations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from safetensors.torch import load_file, save_file  # noqa: E402

from spiritlm.components.config import TrainConfig  # noqa: E402
from spiritlm.components.metrics import TYPES  # noqa: E402
from spiritlm.components.scoring import Score, ScorerStats  # noqa: E402
from spiritlm.models import Capabilities, ModelSpec, detect_family, register, unregister  # noqa: E402

MARKER = "toy.json"
TEXT = ("the dog was small. it liked the park. they went every day. the cake was soft. "
        "she cut a piece. it tasted sweet. a bird sat in the garden. ") * 4


@dataclass
class ToyConfig(TrainConfig):
    model_type: str = "toy"


class CharBigram(torch.nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)
        # what the trainer reads to count FLOPs per token
        self.config = SimpleNamespace(hidden_size=dim, num_hidden_layers=1, num_attention_heads=1,
                                      num_key_value_heads=1, intermediate_size=dim, vocab_size=vocab)

    def forward(self, x_BT):
        return self.head(self.emb(x_BT))


def _ids(text: str) -> list[int]:
    return [min(ord(c), 127) for c in text]


class ToyBatches:
    """Resumable: its position is its whole state."""

    def __init__(self, seq_len: int):
        self.ids, self.T, self.pos = _ids(TEXT), seq_len, 0

    def next_batch(self, B: int) -> dict:
        rows = []
        for _ in range(B):
            if self.pos + self.T + 1 > len(self.ids):
                self.pos = 0
            rows.append(self.ids[self.pos:self.pos + self.T + 1])
            self.pos += self.T
        t = torch.tensor(rows)
        return {"x_BT": t[:, :-1], "y_BT": t[:, 1:]}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state) -> None:
        self.pos = state["pos"]


def _loss(engine, batch, device):
    logits_BTV = engine(batch["x_BT"].to(device))
    y_BT = batch["y_BT"].to(device)
    loss = torch.nn.functional.cross_entropy(logits_BTV.flatten(0, 1).float(), y_BT.flatten())
    sums, counts = torch.zeros(len(TYPES)), torch.zeros(len(TYPES))
    sums[0], counts[0] = loss.detach() * y_BT.numel(), y_BT.numel()  # all text
    return loss, sums, counts


def _export(trainer, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in trainer.engine.module.state_dict().items()},
              str(out_dir / "model.safetensors"))
    (out_dir / MARKER).write_text(json.dumps({"family": "toy"}) + "\n")
    return out_dir


def _load(directory, device="cpu", dtype=None):
    model = CharBigram()
    model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
    return model.eval(), None


class ToyScorer:
    def __init__(self, model):
        self.model, self.stats, self.progress_desc = model, ScorerStats(), ""

    @torch.no_grad()
    def score(self, requests) -> list[Score]:
        out = []
        for r in requests:
            ctx = "".join(text for _kind, text in r.context)
            cont = "".join(text for _kind, text in r.continuation)
            ids = torch.tensor([_ids(ctx[-1:] or " ") + _ids(" " + cont)])
            logp = torch.log_softmax(self.model(ids[:, :-1]), -1).gather(-1, ids[:, 1:, None])
            out.append(Score(float(logp.sum()), ids.shape[1] - 1))
            self.stats.requests += 1
        return out


TOY = ModelSpec(
    "toy", lambda: ToyConfig, build=lambda cfg, ds_config=None, dtype=None: (CharBigram(), None),
    batches=lambda cfg, model, rank=0, world=1: ToyBatches(cfg.data.seq_len), loss=_loss, export=_export,
    detect=lambda d: (d / MARKER).is_file(), detect_priority=50, load=_load,
    scorer=lambda model, tok, enc, scoring, eval_cfg: ToyScorer(model),
    capabilities=Capabilities(speech_in=False, speech_out=False, text_out=True, settings=("T",),
                              tasks=("storycloze",)),
    description="character bigram LM (a test family)")

STORIES = [("Tom had a dog.", "The dog was small.", "It liked the park.", "They went every day.",
            "Tom and the dog were happy.", "The dog was a cake.", 1),
           ("The cake came out of the oven.", "It was soft.", "She cut a piece.", "It tasted sweet.",
            "The river sang at the market.", "She ate the whole piece.", 2)]


@pytest.fixture
def toy_family():
    register(TOY)
    yield TOY
    unregister("toy")


def test_a_family_defined_in_a_test_trains_exports_reloads_and_evaluates_through_the_cli(toy_family, tmp_path,
                                                                                       capsys):
    from spiritlm.cli import main

    recipe = tmp_path / "toy.toml"
    recipe.write_text(f'''model_type = "toy"
run_dir = "{tmp_path / 'run'}"
steps = 2
micro_batch_size = 2
global_batch_size = 2
[data]
seq_len = 16
[deepspeed]
precision = "fp32"
[log]
progress_bar = false
plots = false
tensorboard = false
''')
    assert main(["train", str(recipe)]) == 0
    export = tmp_path / "run" / "hf"
    assert (export / MARKER).is_file()
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["loss"] > 0 for m in metrics)
    assert detect_family(export) is TOY and detect_family(tmp_path / "run" / "hf").name == "toy"

    head = ("InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
            "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n")
    (tmp_path / "sc.csv").write_text(head + "".join(f"s{i},{','.join(map(str, s))}\n" for i, s in enumerate(STORIES)))
    eval_recipe = tmp_path / "suite.toml"
    eval_recipe.write_text(f'''data_root = "{tmp_path}"
output_dir = "{tmp_path / 'eval'}"
speech_encoder = ""
[storycloze]
text = "sc.csv"
settings = ["T"]
[topic_storycloze]
text = "sc.csv"
settings = ["T"]
[scoring]
normalize = false
''')
    assert main(["eval", str(eval_recipe), "--model", str(tmp_path / "run")]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    flat = json.dumps(res)
    assert '"family": "toy"' in flat
    # StoryCloze T was scored through the toy scorer; Topic-StoryCloze is not the family's task:
    # skipped, and the report says why
    assert res["skipped"] == {"topic_storycloze/T": "the toy family does not run topic_storycloze (it runs "
                                                    "storycloze)"}
    assert res["results"]["storycloze"]["T"]["task"] == "storycloze"
    items = [json.loads(x) for x in (tmp_path / "eval" / "items.jsonl").read_text().splitlines()]
    assert [it["task"] for it in items] == ["storycloze", "storycloze"]
