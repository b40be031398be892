"""CPU throughput of keras_coatnet next to timm, same architecture and weights.

    coatnet bench                 # the full run (10-20 min on 2 cores)
    coatnet bench --quick         # CoAtNet-0 at 224, batch 1, 2 rounds: a minute or two
    coatnet bench --smoke         # the smallest run of every part (pico at 64 px)

For every model, input size and batch, timm and the Keras variants are
timed in one process so that the ratios compare like with like on a noisy
machine:

- timm: `model.eval()`, `torch.inference_mode()`, fused attention on;
- keras `predict`: `model.predict(x, batch_size=B, verbose=0)`;
- keras `graph`: `tf.function(lambda x: model(x, training=False))`;
- keras `xla`: the same with `jit_compile=True`;
- keras `savedmodel`: `keras_coatnet.export(...)` reloaded with
  `tf.saved_model.load`, `signatures["serving_default"](images=x)`.

Both frameworks hold the same weights (`keras_coatnet.convert.from_timm`) and
the first outputs of every variant are compared with timm's (max abs diff is
printed). The keras models for predict/graph/xla are built without the
preprocessing layer and get exactly timm's normalized input. The SavedModel
needs the built-in preprocessing (pixels in 0..255): it is exported (in a
child process, from the same timm weights) from a keras model with
preprocessing and `outputs="logits"`, so it also does one per-pixel affine
map and a top-k over the logits on top of the network (both negligible).

The variants are timed in interleaved rounds (one call of each per round,
the order rotated) after warm-up calls, so drift in the machine's load hits
all of them alike. Reported: median and min wall time per call, images/s
from the median, the ratio keras/timm (> 1: keras faster), achieved GFLOP/s
(2 x MACs of `keras_coatnet.profile`) and its share of an sgemm peak measured
in the same run (float32 2048^2 with numpy, tf.matmul and torch.mm, before
every model and at the end; the best of all, since other processes can only
make it lower). timm is also timed in a child process that imports torch and
timm only ("timm (own process)", column "vs timm alone"): timm's speed depends
on the process around it (allocator state and page faults; up to 2x for the
training step), so both ratios are given. The "other load" column is the CPU
(in cores) that other processes used while a block was timed: torch's OpenMP
threads slow down up to 15x when another process takes one of two cores, so
rows with other load above ~0.1 are not comparable. `--wait-idle S` waits
for a quiet machine before each block and `--retries N` times a busy block
again.

The training step (forward, backward, AdamW update; BatchNorm in training
mode, drop path 0) is timed with `model.train_on_batch` after
`model.compile(..., jit_compile=False)` and again with `jit_compile=True`,
each interleaved with timm's `model.train()`, `loss.backward()`,
`optimizer.step()` (timm's row pools both blocks). Its GFLOP/s count a step
as 3 forward passes (the usual estimate).

No result depends on an assertion about timing; the benchmark only reports.

Modules: `options` (flags to settings, no heavy imports), `timing` (rounds,
summaries, sgemm peak, machine load, memory), `workers` (the child
processes: timm alone, the SavedModel export), `inference` and `training`
(the cases), `report` (rows, the table, the environment), `runner` (the
whole run). torch and timm are imported through `keras_coatnet._timm`.
"""
