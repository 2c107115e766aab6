/* ONNX executor: a loaded st_onnx_model planned for one input size and run
 * on a backend.
 *
 * st_onnx_plan_new does all the work that does not depend on pixel values,
 * once: it infers every value's shape for the fixed input, evaluates on the
 * host every node whose inputs are all constants (the Shape -> Gather/Slice
 * -> Cast -> Unsqueeze -> Concat chains exporters write to size a Resize),
 * folds inference BatchNormalization into the Conv before it and a Relu
 * after a Conv into the Conv (a BatchNormalization with no such Conv runs
 * as a per-channel Mul and Add; padding that differs between the two sides
 * of an axis is added to the Conv's input as concatenated zeros, since the
 * backend's convolution pads symmetrically), turns Reshape, Flatten,
 * Squeeze, Unsqueeze and Identity of runtime tensors into views, uploads
 * the weights, and gives every runtime tensor a buffer from a pool sized by
 * liveness (a buffer is reused once its last reader has run).
 * st_onnx_plan_run then only queues backend ops: it allocates nothing.
 *
 * What the executor does not implement (an op, an attribute value, a dtype)
 * is refused by st_onnx_plan_new with ST_ENOTSUP and one detail line
 * "<model label>: node '<name>' (<OpType>): <what is missing>", never run
 * with a wrong meaning. Gather and Cast (other than to the same type) run
 * only on constants; the executor computes in F32 (ArgMax yields I64).
 *
 * Ownership: the plan borrows the model (which must outlive it) and the
 * backend; it owns its uploaded weights and buffers. Outputs returned by
 * st_onnx_plan_run are borrowed from the plan and valid until the next run
 * or st_onnx_plan_free.
 */
#ifndef ST_MODELS_ONNX_EXEC_H
#define ST_MODELS_ONNX_EXEC_H

#include <stdint.h>

#include "gpu/backend.h"
#include "models/onnx_graph.h"

typedef struct st_onnx_plan st_onnx_plan;

/* Plans model `m` for the F32 input of shape input_shape (rank 4,
 * [1,3,H,W] for a teacher; it must agree with every fixed extent the model
 * declares for its single input). */
int st_onnx_plan_new(st_backend *be, const st_onnx_model *m,
                     const int64_t *input_shape, st_onnx_plan **out);
/* One graph input as planned: a runtime F32 tensor of a fixed shape, fed
 * on every run, or a host constant bound at planning (copied; folded like
 * an initializer, so the nodes it feeds may fold away). */
typedef struct st_onnx_plan_input {
  const char *name;            /* the model's input name */
  int ndim;                    /* runtime input: rank */
  int64_t shape[ST_MAX_DIMS];  /* runtime input: extents */
  const st_tensor *value;      /* non-NULL: bound to this host tensor */
} st_onnx_plan_input;

/* Plans a model with any number of inputs (recurrent states, scalars):
 * every graph input must be given exactly once. */
int st_onnx_plan_new_inputs(st_backend *be, const st_onnx_model *m,
                            const st_onnx_plan_input *inputs, int n_inputs,
                            st_onnx_plan **out);
/* Runs a plan made by st_onnx_plan_new_inputs: inputs[k] is the tensor of
 * plan input k (F32 on the backend, of its planned shape; ignored, and may
 * be NULL, for a bound constant). The tensors are read during the run only
 * and must not be outputs of this plan. */
int st_onnx_plan_run_inputs(st_onnx_plan *p, const st_tensor *const *inputs,
                            int n_inputs);
/* Runs the plan on `input` (F32, on the plan's backend, of the planned
 * shape); plans with one runtime input only. *output (may be NULL) receives the model's first output, borrowed;
 * the others are read with st_onnx_plan_output. Queued asynchronously on
 * backends with streams, as every op. */
int st_onnx_plan_run(st_onnx_plan *p, const st_tensor *input,
                     const st_tensor **output);
/* Number of model outputs. */
int st_onnx_plan_n_outputs(const st_onnx_plan *p);
/* Index of the output named `name`, or -1. */
int st_onnx_plan_output_index(const st_onnx_plan *p, const char *name);
/* Output `index` of the latest run (borrowed); its shape and dtype are
 * valid from planning on. NULL when index is out of range. */
const st_tensor *st_onnx_plan_output(const st_onnx_plan *p, int index);
/* Planning figures, for logs and tests. */
typedef struct st_onnx_plan_stats {
  int steps;             /* backend ops one run queues */
  int folded_nodes;      /* nodes evaluated on the host at plan time */
  int fused_batchnorms;  /* BatchNormalization folded into a Conv */
  int fused_relus;       /* Relu fused into a Conv */
  int views;             /* runtime values that alias another's storage */
  int buffers;           /* planned activation buffers */
  int64_t buffer_bytes;  /* their total size */
  int64_t naive_bytes;   /* what one buffer per runtime value would take */
} st_onnx_plan_stats;
void st_onnx_plan_get_stats(const st_onnx_plan *p, st_onnx_plan_stats *out);
/* Accepts NULL. */
void st_onnx_plan_free(st_onnx_plan *p);

#endif
