#!/usr/bin/env bash
# The tests and benchmarks on a GPU machine whose python3 already has jax with CUDA,
# flax, optax, chex, pytest and hypothesis (how the figures of benchmarks/README.md's GPU
# section were made). Missing pure-Python packages (gymnax, gymnasium, ...) may be
# given as wheels in .whl/. Logs and JSON go to $OUT (default runs/gpu). STEPS picks
# what runs, in order (default: throughput fvp pytest; also: learning, and learning-cpu:
# the six learning rows on the host's CPU, 2 cores each, 6 processes at once).
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc;
  python3 -c "import jax, flax, optax, gymnax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
STEPS=${STEPS:-throughput fvp pytest}
for step in $STEPS; do
  case $step in
    throughput) timeout "${THROUGHPUT_S:-170}" python3 benchmarks/throughput.py \
                  --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log" ;;
    fvp) timeout "${FVP_S:-120}" python3 benchmarks/fvp_cost.py --json "$OUT/fvp_cost.json" \
           2>&1 | tee "$OUT/fvp_cost.log" ;;
    learning) timeout "${LEARNING_S:-200}" python3 benchmarks/learning.py \
                --json "$OUT/learning.json" 2>&1 | tee "$OUT/learning.log" ;;
    learning-cpu)  # the six rows on the host's CPU: one process per row, 2 cores each
      i=0
      for env in CartPole-v1 Pendulum-v1 Acrobot-v1; do for algo in npg trpo; do
        JAX_PLATFORMS=cpu taskset -c $((2 * i))-$((2 * i + 1)) timeout "${LEARNING_S:-200}" \
          python3 benchmarks/learning.py --env $env --algo $algo \
          --json "$OUT/learning-cpu-$env-$algo.json" > "$OUT/learning-cpu-$env-$algo.log" 2>&1 &
        i=$((i + 1))
      done; done
      wait; head -1 "$OUT/learning-cpu-CartPole-v1-npg.log"; grep -h "^| [CPA]" "$OUT"/learning-cpu-*.log ;;
    # LLVM O1, as before session 28: the suite's O0 (tests/conftest.py) is a CPU choice,
    # and on the GPU the level also reaches the kernels' LLVM pipeline (not measured there).
    pytest) XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=1" \
            timeout "${PYTEST_S:-480}" python3 -m pytest -q -rfE -n "${PYTEST_WORKERS:-14}" \
              -p no:cacheprovider --timeout 300 --doctest-modules npgjax tests 2>&1 \
              | tee "$OUT/pytest.log" ;;
    *) echo "unknown step $step" ;;
  esac
done
