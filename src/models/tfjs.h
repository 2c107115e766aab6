/* TensorFlow.js graph models: a model.json (+ weight shards) imported onto
 * the ONNX IR (onnx_graph.h), so that the ONNX executor plans and runs it.
 *
 * A TF.js graph model is a frozen TensorFlow GraphDef written as JSON
 * (`modelTopology.node`: name, op, inputs, TF attributes), a `signature`
 * naming the inputs and outputs, and a `weightsManifest` that lays the
 * constants out in binary shards (float32, int32, bool; optionally
 * quantised to uint8/uint16 with a min and scale, or to float16, which
 * st_tfjs_load dequantises exactly as TF.js does: the value v*scale+min
 * computed in double and rounded once to float32).
 *
 * The import is a translation, node by node, into ONNX ops the executor
 * implements (docs/teacher.md lists the TF ops). It does at load time what
 * needs no pixel values:
 *  - layout: TF.js graphs are NHWC; image tensors become NCHW, the
 *    executor's layout, and every axis attribute, padding list and shape
 *    vector is remapped. Rank-4 graph inputs are NCHW in the IR ([N,C,H,W],
 *    the declared extents permuted) and rank-4 outputs too;
 *  - control flow: Switch/Merge pairs (tf.cond) are folded when their
 *    predicate is constant once the bound inputs are known (RVM branches
 *    on downsample_ratio); the dead branch is pruned with everything that
 *    depends on it, data or control. A predicate that depends on pixels is
 *    refused;
 *  - fusions that are only visible at the TF level: a SpaceToBatchND ->
 *    convolution -> BatchToSpaceND chain becomes one dilated convolution
 *    (its paddings and crops kept exact), a per-channel Mul/Add after a
 *    bias-free convolution is folded into it, the hard-swish and
 *    hard-sigmoid expansions Keras writes become one op;
 *  - only the nodes the requested outputs need are translated.
 * Anything else is refused with ST_ENOTSUP and a line naming the model,
 * the node and its op ("rvm.json: node 'x' (MirrorPad): operator MirrorPad
 * is not supported"), never run with a guessed meaning.
 *
 * Ownership: the returned model is independent of the files and of the
 * options; free it with st_onnx_model_free. Its initializers are the
 * model's constants as the file stores them (TF layout, dequantised),
 * named after their Const nodes, with int32 widened to INT64 (the IR's
 * index type); layout conversions are IR nodes the executor folds.
 */
#ifndef ST_MODELS_TFJS_H
#define ST_MODELS_TFJS_H

#include <stddef.h>

#include "models/onnx_graph.h"

/* Largest weight shard we read. */
#define ST_TFJS_MAX_SHARD_BYTES ((size_t)2 << 30)

/* How one graph input (a Placeholder) is imported. Inputs not listed are
 * runtime F32 inputs of their declared rank. */
typedef struct st_tfjs_input {
  const char *name;  /* the placeholder ("src"; a trailing ":0" is accepted) */
  int bound;         /* 1: replaced by the scalar F32 constant `value` */
  double value;      /* bound: its value */
  int rank;          /* runtime: the rank, for inputs declared with an
                        unknown rank (RVM's recurrent states: 4); 0 = as
                        declared */
} st_tfjs_input;

typedef struct st_tfjs_options {
  const st_tfjs_input *inputs; /* n_inputs entries, may be NULL */
  size_t n_inputs;
  const char *const *outputs;  /* signature output names to keep ("pha");
                                  NULL: every signature output */
  size_t n_outputs;
} st_tfjs_options;

/* Imports `model_json` (its weight shards are read from the same folder).
 * opts may be NULL (every input at run time, every output). Graph outputs
 * are named by their signature keys ("pha", "r1o"); graph inputs by their
 * placeholder names ("src"). */
int st_tfjs_load(const char *model_json, const st_tfjs_options *opts,
                 st_onnx_model **out);

/* A graph input as the file declares it. */
#define ST_TFJS_NAME_BYTES 256
typedef struct st_tfjs_input_info {
  char name[ST_TFJS_NAME_BYTES]; /* the placeholder's name */
  int rank;                      /* declared rank; -1 unknown */
} st_tfjs_input_info;

/* Lists the model's Placeholder nodes (at most cap; ST_ERANGE beyond), in
 * file order, without reading the weights. */
int st_tfjs_list_inputs(const char *model_json, st_tfjs_input_info *out,
                        size_t cap, size_t *count);

/* 1 when `path` names a TF.js graph model (ends in ".json"). */
int st_tfjs_is_model_path(const char *path);

#endif
