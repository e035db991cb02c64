import json, sys
from latentstore_train.codec import recipe_config, train
name, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = f"/tmp/pilot/{name}"
cfg = recipe_config(name, "cpu-long", cooldown_from=start, cooldown_steps=n, stop_at=start + n, val_cpu_minutes=10.0,
                    results_dir="")
print(name, "at", json.load(open(f"{run}/ckpt.json"))["step"], "cool-down from", start, "over", n, flush=True)
print(train(cfg, run, progress=False), flush=True)
