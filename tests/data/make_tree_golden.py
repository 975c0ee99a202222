"""Golden log T of the tree scorer before issue 12c (main 7a10045, padded batches sized by logits), tiny
random models, float32 CPU. Run once from the repository root; kept to show how tree_golden.npz was made."""
import numpy as np
from dbgpu.models import load_model
from dbgpu.tasks import get_task
from dbgpu.formatting import encode_states
from dbgpu.scoring.tree import tree_score_matrix
STATES = ["ATTITUDE", "BUZZY", "EXCELLENT", "TURKEY", "PROBLEMS", "PERSONAL", "PURSUE"]
task = get_task("word100")
out = {}
for arch in ["llama", "qwen2", "gemma3"]:
    lm = load_model(f"random:{arch}", device="cpu", seed=0)
    enc = encode_states(lm.tokenizer, task, STATES)
    out[arch] = tree_score_matrix(lm.model, enc.prompt_ids, enc.cont_ids, pad_id=lm.tokenizer.pad_token_id)
    print(arch, out[arch][:2, :3])
np.savez("tests/data/tree_golden.npz", states=np.array(STATES), **out)
