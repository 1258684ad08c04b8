"""The lm-eval adapter: the real harness, offline, on local copies of the paper's task definitions.

Three numbers must agree on the same random tiny model: the harness running transformers+torch
(`hf`), the harness running prunejax (`prunejax`), and prunejax's own zero-shot code.
"""

from __future__ import annotations

import json
import os

import pytest
from test_evaluate_loglik import CORPUS, build_model_dir
from test_evaluate_tasks import write_task_dir

from prunejax.evaluate import source, tasks, zeroshot

lm_eval = pytest.importorskip("lm_eval")

# The harness's own YAML for each task, overridden only to read a local JSON-lines file.
HARNESS_YAML = {
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "piqa": "piqa/piqa.yaml",
    "sciq": "sciq/sciq.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}


def write_task_yamls(yaml_dir: str, task_dir: str) -> None:
    root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    os.makedirs(yaml_dir, exist_ok=True)
    for name, rel in HARNESS_YAML.items():
        split = tasks.TASKS[name].split
        with open(os.path.join(yaml_dir, f"local_{name}.yaml"), "w") as f:
            f.write(
                f"include: {os.path.join(root, rel)}\ntask: local_{name}\ntag: []\ndataset_path: json\n"
                f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    {split}: {task_dir}/{name}.jsonl\n"
                f"training_split: null\nvalidation_split: {split if split == 'validation' else 'null'}\n"
                f"test_split: {split if split == 'test' else 'null'}\n"
            )
    # a perplexity task: loglikelihood_rolling over whole documents longer than the model's window
    with open(os.path.join(task_dir, "docs.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": CORPUS[i:] * 2}) + "\n" for i in (0, 50))
    with open(os.path.join(yaml_dir, "local_rolling.yaml"), "w") as f:
        f.write(
            "task: local_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {task_dir}/docs.jsonl\ntest_split: test\noutput_type: loglikelihood_rolling\n"
            'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, dict]:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    root = tmp_path_factory.mktemp("harness")
    model_dir = build_model_dir(str(root / "model"), max_positions=64)  # long prompts get left-truncated
    task_dir = write_task_dir(str(root / "tasks"), n=4)
    write_task_yamls(str(root / "yaml"), task_dir)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(root / "yaml"))
    names = [f"local_{n}" for n in HARNESS_YAML] + ["local_rolling"]
    runs = {}
    for model, args in [("prunejax", ""), ("hf", ",dtype=float32,device=cpu")]:
        runs[model] = lm_eval.simple_evaluate(
            model=model,
            model_args=f"pretrained={model_dir},batch_size=4{args}",
            tasks=names,
            task_manager=manager,
            num_fewshot=0,
            log_samples=True,
        )
    return model_dir, task_dir, runs


def test_model_type_is_registered() -> None:
    from lm_eval.api.registry import get_model

    from prunejax.evaluate.harness import PrunejaxLM

    assert get_model("prunejax") is PrunejaxLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours keeps the harness's built-ins


def test_harness_numbers_equal_ours(setup) -> None:
    model_dir, task_dir, runs = setup
    m = source.load_model(model_dir)
    for name in HARNESS_YAML:
        key = f"local_{name}"
        ours = zeroshot.evaluate_task(m.cfg, m.params, m.tokenizer, name, task_dir, batch_size=4)
        _, reqs = tasks.load_task(name, task_dir)
        pairs = [p for r in reqs for p in r.pairs]
        lls = [s.logprob for s in zeroshot.loglikelihoods(m.cfg, m.params, m.tokenizer, pairs, batch_size=4)]
        for model in ("hf", "prunejax"):
            res = runs[model]["results"][key]
            assert res["acc,none"] == ours["acc"], (model, name)
            if "acc_norm,none" in res:
                assert res["acc_norm,none"] == ours["acc_norm"], (model, name)
            samples = sorted(runs[model]["samples"][key], key=lambda s: s["doc_id"])
            harness_lls = [float(r[0]) for s in samples for r in s["filtered_resps"]]
            assert harness_lls == pytest.approx(lls, rel=1e-4), (model, name)


def test_rolling_loglikelihood_equals_hf(setup) -> None:
    _, _, runs = setup
    ours = runs["prunejax"]["results"]["local_rolling"]["word_perplexity,none"]
    ref = runs["hf"]["results"]["local_rolling"]["word_perplexity,none"]
    assert ours == pytest.approx(ref, rel=1e-4)


def test_greedy_generation_equals_torch(setup) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from prunejax.evaluate.harness import PrunejaxLM

    model_dir, _, _ = setup
    lm = PrunejaxLM(pretrained=model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("And God said, Let there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = LlamaForCausalLM.from_pretrained(model_dir).generate(ids, max_new_tokens=6, do_sample=False)
    want = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert lm._greedy("And God said, Let there", {"until": [], "max_gen_toks": 6}) == want
    stop = want[len(want) // 2 :]
    if stop.strip():
        assert lm._greedy("And God said, Let there", {"until": [stop], "max_gen_toks": 6}) == want.split(stop)[0]
