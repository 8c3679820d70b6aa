"""The dev-subset evaluation during training: EM/F1 of the student where it trains, as bench scores a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeqa.bench.engines import QAModel
from edgeqa.bench.metric import score
from edgeqa.bench.squad import SquadDataset
from edgeqa.compress.train_config import TrainConfig

EVAL_BATCH = {"cpu": 32, "cuda": 128}  # windows per forward pass in the dev-subset evaluation


class DeviceEngine:
    """bench's engine interface on the training device: padded numpy inputs moved there, logits back as numpy.
    (bench's TorchEngine feeds CPU tensors, so a student on a GPU could not be scored where it trains.)"""

    backend = "torch"

    def __init__(self, model, input_names: tuple[str, ...], device: str) -> None:
        self.model, self.input_names, self.device = model.eval(), input_names, device

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


def score_student(student, tokenizer, examples, names, tc: TrainConfig, device: str = "cpu") -> dict[str, float]:
    """EM/F1 on `examples`, tokenised and post-processed by bench.qa as at inference, the model run on `device`."""

    qa = QAModel(DeviceEngine(student, names, device), tokenizer, Path("."))
    answers = qa.answer(examples, tc.qa, batch_size=EVAL_BATCH[device.split(":")[0]], progress=False)
    metrics = score(SquadDataset("dev-subset", "1.1", list(examples)), {k: a.text for k, a in answers.items()})
    return {"exact": round(metrics["exact_match"], 3), "f1": round(metrics["f1"], 3), "questions": len(examples)}
