import glob
import json
import os

import torch

out = {}
for f in sorted(glob.glob("/tmp/ftctl-resume/**/pytorch_model_fsdp.bin", recursive=True)):
    sd = torch.load(f, map_location="cpu", weights_only=False)
    rows = {k: [list(v.shape), str(v.dtype), v.numel() * v.element_size()] for k, v in sd.items()}
    big = sorted(rows.items(), key=lambda kv: -kv[1][2])[:6]
    out[f] = {
        "n_keys": len(rows),
        "bytes": sum(r[2] for r in rows.values()),
        "file_bytes": os.path.getsize(f),
        "lora_keys": sum("lora_" in k for k in rows),
        "non_lora": [k for k in rows if "lora_" not in k][:10],
        "largest": big,
    }
print(json.dumps(out, indent=1))
json.dump(out, open(os.environ["OUT"] + "/fsdp_ckpt_keys.json", "w"), indent=1)
