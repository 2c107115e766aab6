/* The server's configuration (config/server.json), read with jansson.
 *
 * Schema (docs/server.md documents it for operators; keep both the same).
 * Every key is optional unless marked; a missing key takes the default
 * shown. Unknown keys and wrong JSON types are ST_EFORMAT, values out of
 * range ST_EINVAL; the detail line names the file and the key path
 * ("server.json: limits.max_clients must be in [1, 100000]").
 *   {
 *     "listen": {"host": "127.0.0.1", "port": 7700},   port 0..65535 (0: any)
 *     "metrics": {"host": "127.0.0.1", "port": 0},     0 = no metrics listener
 *     "backend": "cpu",             "cpu" | "cuda" | "auto"
 *     "device": 0,                  CUDA device ordinal, >= 0
 *     "workers": 1,                 compute workers, [1, 64]
 *     "threads_per_worker": 0,      CPU threads of each worker; 0 = online
 *                                   cores / workers (at least 1), else [1, 1024]
 *     "deterministic": false,
 *     "conv_search": "exhaustive",  "exhaustive" | "heuristic": how CUDA
 *                                   picks each convolution's cuDNN algorithm
 *                                   (once per shape and worker context)
 *     "cuda_graphs": true,          CUDA: replay the student's recorded op
 *                                   sequences (false: launch each op)
 *     "null_compute": false,        true: no teacher, no student: updates carry
 *                                   no tensors (measures the loop alone)
 *     "teacher": "teacher-small.json",   path of the teacher config (required
 *                                   unless null_compute)
 *     "student": {
 *       "config": "student.json",   path of the student config
 *       "weights": null             null or path of base weights (.safetensors)
 *     },
 *     "distill": {                  each key defaults to the student config's
 *       "threshold": 0.8,           (0, 1)
 *       "min_stride": 8,            >= 1
 *       "max_stride": 64,           >= min_stride
 *       "max_updates": 8,           >= 0
 *       "lr": 0.01,                 > 0
 *       "trainable": [...] | "full",  student module names
 *       "update_encoding": "f16-delta",  "f32" | "f16" | "f16-delta"
 *       "bootstrap_full_keyframes": null  null: 16 without base weights, 0
 *                                   with them; else [0, 1000000]
 *     },
 *     "limits": {
 *       "max_clients": 256,              [1, 100000]
 *       "max_message_bytes": 16777216,   [64, 1 GiB]
 *       "max_frame_width": 3840,         [1, 8192]
 *       "max_frame_height": 2160,        [1, 8192]
 *       "handshake_timeout_ms": 5000,    hello must arrive within, [1, 3600000]
 *       "idle_timeout_ms": 60000,        no complete message for this long, [1, 86400000]
 *       "message_timeout_ms": 10000,     one message must arrive whole within, [1, 3600000]
 *       "max_write_queue_bytes": 67108864,  bytes queued to one client, [1024, 4 GiB]
 *       "shutdown_timeout_ms": 10000,    in-flight jobs may finish within, [0, 3600000]
 *       "session_linger_ms": 60000       a disconnected session's learner is kept
 *                                        this long for `hello.resume`, [0, 86400000]
 *     },
 *     "token": null,                null or a non-empty string <= 256 bytes
 *     "log_level": "info"           "error" | "warn" | "info" | "debug"
 *   }
 * Relative paths are resolved against the config file's folder.
 */
#ifndef ST_LOOP_SERVER_CONFIG_H
#define ST_LOOP_SERVER_CONFIG_H

#include <stdint.h>

#include "base/log.h"
#include "gpu/backend.h"
#include "models/config.h"
#include "proto/proto.h"

#define ST_SERVER_PATH_BYTES 4096
#define ST_SERVER_HOST_BYTES 256
#define ST_SERVER_DEFAULT_HOST "127.0.0.1"
#define ST_SERVER_DEFAULT_PORT 7700
#define ST_SERVER_MAX_WORKERS 64
#define ST_SERVER_DEFAULT_MAX_CLIENTS 256
#define ST_SERVER_DEFAULT_MAX_FRAME_WIDTH 3840
#define ST_SERVER_DEFAULT_MAX_FRAME_HEIGHT 2160
#define ST_SERVER_DEFAULT_HANDSHAKE_TIMEOUT_MS 5000
#define ST_SERVER_DEFAULT_IDLE_TIMEOUT_MS 60000
#define ST_SERVER_DEFAULT_MESSAGE_TIMEOUT_MS 10000
#define ST_SERVER_DEFAULT_MAX_WRITE_QUEUE_BYTES (64ull * 1024 * 1024)
#define ST_SERVER_DEFAULT_SHUTDOWN_TIMEOUT_MS 10000
#define ST_SERVER_DEFAULT_SESSION_LINGER_MS 60000
#define ST_SERVER_DEFAULT_UPDATE_ENCODING ST_UPDATE_F16_DELTA
/* Full-network training for a session's first key frames when the student
 * starts from random weights (partial distillation of random frozen
 * features learns nothing useful). */
#define ST_SERVER_DEFAULT_BOOTSTRAP_NO_WEIGHTS 16


typedef struct st_server_limits {
  uint32_t max_clients;
  uint32_t max_message_bytes;
  uint32_t max_frame_width, max_frame_height;
  uint64_t handshake_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t message_timeout_ms;
  uint64_t max_write_queue_bytes;
  uint64_t shutdown_timeout_ms;
  uint64_t session_linger_ms;
} st_server_limits;

typedef struct st_server_config {
  char listen_host[ST_SERVER_HOST_BYTES];
  int listen_port;
  char metrics_host[ST_SERVER_HOST_BYTES];
  int metrics_port;                        /* 0: no metrics listener */
  st_backend_kind backend;
  int device;
  int workers;
  int threads_per_worker;                  /* resolved: >= 1 */
  int deterministic;
  int conv_exhaustive;                     /* conv_search == "exhaustive" */
  int cuda_graphs;                         /* 0: st_backend_options.graphs_off */
  int null_compute;
  char teacher_path[ST_SERVER_PATH_BYTES]; /* resolved; "" with null_compute */
  char student_config_path[ST_SERVER_PATH_BYTES]; /* resolved; "" = defaults */
  char student_weights_path[ST_SERVER_PATH_BYTES]; /* resolved; "" = none */
  /* The student config file with the "distill" overrides applied. */
  st_student_config student;
  st_update_encoding update_encoding;
  int bootstrap_full_keyframes;            /* resolved (the null rule applied) */
  st_server_limits limits;
  int has_token;
  char token[ST_PROTO_TOKEN_BYTES + 1];
  st_log_level log_level;
} st_server_config;

/* Every default above (student config defaults too, no teacher path). */
void st_server_config_defaults(st_server_config *c);
/* Reads a file; paths resolve against its folder. *out written on success. */
int st_server_config_load(const char *path, st_server_config *out);
/* Same for text; `label` names it in errors, `base_dir` resolves paths. */
int st_server_config_parse(const char *json_text, const char *label,
                           const char *base_dir, st_server_config *out);
/* Parses "HOST:PORT" (IPv4, a name, or "[v6]:PORT") for --listen. */
int st_server_parse_host_port(const char *text, char *host, size_t host_bytes,
                              int *port);

#endif
