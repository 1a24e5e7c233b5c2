"""One torchrun worker that runs several short trainings in a row (one process start for all of them).

``torchrun --nproc_per_node 2 distributed_worker.py JOBS.json``: JOBS.json is a list of
``{"name", "config", "record"}``; each job trains with ``run_sft``; ``record`` says what each rank writes
into ``config.output_dir/..``:

* ``"params"``: every rank saves its trained parameters (``<name>.rank<R>.pt``) to compare the ranks;
* ``"logits"``: all ranks run the trained model on fixed token ids (ZeRO-3 gathers the weights for the
  forward); rank 0 saves the logits (``<name>.logits.pt``) to compare with a one-process reload.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

LOGIT_IDS = torch.arange(3, 35).reshape(2, 16)  # fixed token ids of the tiny vocabulary


def main(jobs_file: str) -> None:
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from llmtune.arguments import parse_args
    from llmtune.train.run import run_sft

    rank = int(os.environ["RANK"])
    for job in json.loads(Path(jobs_file).read_text()):
        unset_hf_deepspeed_config()  # transformers keeps the last DeepSpeed config global: one run per process
        result = run_sft(parse_args(job["config"]))
        where = Path(job["config"]["output_dir"]).parent
        model = result.model
        if job["record"] == "params":
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
            torch.save(params, where / f"{job['name']}.rank{rank}.pt")
        elif job["record"] == "logits":
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=LOGIT_IDS).logits.float()
            if rank == 0:
                torch.save({"input_ids": LOGIT_IDS, "logits": logits}, where / f"{job['name']}.logits.pt")
        print(f"worker: job {job['name']} done on rank {rank}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
