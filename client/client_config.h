/* The client's settings: one table (ST_CLIENT_SETTINGS) gives every
 * setting its JSON key, its command-line flag, its type, its default and
 * its range, so config/client.json, the flags, the defaults and the checks
 * can never disagree.
 *
 * Precedence: built-in defaults < the --config file < command-line flags.
 * The file is parsed strictly (jansson through base/json.h): an unknown
 * key, a duplicate key, a wrong JSON type or a value out of range is an
 * error that names the file and the key ("client.json: unknown key
 * jpeg_qualty"). A flag is the key with '-' for '_' ("--jpeg-quality 80");
 * a boolean flag takes no value ("--realtime").
 *
 * Paths: "student" and "weights" given in the file are relative to the
 * file's folder (as in the server's config), so config/client.json names
 * "student.json" and means config/student.json. Every other path, and every
 * path given as a flag, is taken as written (relative to the working
 * directory).
 *
 * Ownership: a st_client_config is a plain value (fixed-size strings), no
 * allocations.
 */
#ifndef ST_CLIENT_CONFIG_H
#define ST_CLIENT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Longest string setting (paths, URLs), bytes without the NUL. */
#define ST_CLIENT_STR_BYTES 4095
/* Frame sides the client accepts (the protocol's own ceiling). */
#define ST_CLIENT_MAX_SIDE 8192
#define ST_CLIENT_MS_PER_DAY 86400000LL
#define ST_CLIENT_MAX_MESSAGE_BYTES_FLOOR 64LL
#define ST_CLIENT_MAX_MESSAGE_BYTES_CEILING 1073741824LL

typedef enum st_setting_type {
  ST_SET_STR = 0, /* string or null */
  ST_SET_PATH,    /* string or null; relative to the config file's folder */
  ST_SET_INT,     /* integer in [lo, hi] */
  ST_SET_NUM,     /* number in [lo, hi] */
  ST_SET_BOOL,    /* true / false; the flag takes no value */
  ST_SET_ENUM,    /* one of the strings listed in `choices`, "|"-separated */
} st_setting_type;

/* XX(key, type, default, lo, hi, choices, help)
 * Defaults of strings are C strings (NULL: null); of numbers, numbers. */
#define ST_CLIENT_SETTINGS(XX)                                                 \
  XX(server, STR, "127.0.0.1:7700", 0, 0, NULL,                                \
     "HOST:PORT of shadowtutor-server; null: no server (student only)")        \
  XX(input, STR, NULL, 0, 0, NULL,                                             \
     "video file, rtsp:// URL, V4L2 device (/dev/videoN) or - for stdin")      \
  XX(input_format, STR, NULL, 0, 0, NULL,                                      \
     "force a libavformat demuxer (v4l2, mjpeg, ...); null: probe")            \
  XX(rtsp_transport, ENUM, "tcp", 0, 0, "tcp|udp", "RTSP lower transport")     \
  XX(size, STR, NULL, 0, 0, NULL,                                              \
     "WxH the student runs at; null: the video's own size")                    \
  XX(loop, INT, 1, 0, 1000000000, NULL,                                        \
     "plays of a file; 0: forever (benchmarks, demos)")                        \
  XX(realtime, BOOL, 0, 0, 0, NULL,                                            \
     "pace a file to its timestamps and drop frames the student misses")       \
  XX(max_frames, INT, 0, 0, 1000000000000LL, NULL,                             \
     "stop after this many frames from the input; 0: all")                     \
  XX(decode_threads, INT, 1, 0, 64, NULL,                                      \
     "libavcodec decoding threads; 0: FFmpeg's choice")                        \
  XX(queue_frames, INT, 4, 1, 256, NULL,                                       \
     "decoded frames waiting for the student (and for the output writer)")     \
  XX(helper_nice, INT, 10, 0, 19, NULL,                                        \
     "nice value of the reader, writer and key-frame encoder threads, so "    \
     "they fill the student's idle gaps; 0: the student's priority")          \
  XX(student, PATH, "student.json", 0, 0, NULL,                                \
     "student config: classes and input normalisation, as the server's")       \
  XX(weights, PATH, NULL, 0, 0, NULL,                                          \
     "base weights (.safetensors); null: a blank device takes the server's")   \
  XX(backend, ENUM, "cpu", 0, 0, "cpu|cuda|auto", "compute backend")           \
  XX(device, INT, 0, 0, 1024, NULL, "CUDA device ordinal")                     \
  XX(conv_search, ENUM, "exhaustive", 0, 0, "exhaustive|heuristic",            \
     "CUDA: time every cuDNN algorithm once per shape (at the warm-up) or "    \
     "take cuDNN's ranking")                                                   \
  XX(cuda_graphs, BOOL, 1, 0, 0, NULL,                                         \
     "CUDA: replay the student's inference as one recorded graph launch")      \
  XX(threads, INT, 0, 0, 1024, NULL, "CPU inference threads; 0: all cores")    \
  XX(client_id, STR, NULL, 0, 0, NULL, "name sent in hello; null: host name")  \
  XX(token, STR, NULL, 0, 0, NULL, "the server's shared secret, if any")       \
  XX(keyframe_encoding, ENUM, "jpeg", 0, 0, "jpeg|raw",                        \
     "how key frames travel")                                                  \
  XX(jpeg_quality, INT, 90, 1, 100, NULL, "JPEG quality of key frames")        \
  XX(wait_policy, ENUM, "block", 0, 0, "block|never",                          \
     "no update min_stride frames after a key frame: wait (the paper) or "     \
     "keep running and count the frames past due")                             \
  XX(wait_timeout_ms, INT, 30000, 1, ST_CLIENT_MS_PER_DAY, NULL,               \
     "longest wait of the block policy for one update")                        \
  XX(output, STR, NULL, 0, 0, NULL, "overlay video to write (.mp4, .mkv)")     \
  XX(output_codec, ENUM, "auto", 0, 0, "auto|h264|mpeg4",                      \
     "overlay codec; auto: H.264 when libavcodec has it, else MPEG-4")         \
  XX(overlay_alpha, NUM, 0.5, 0.0, 1.0, NULL,                                  \
     "opacity of the class colours in the overlay")                            \
  XX(masks, STR, NULL, 0, 0, NULL, "folder for one PNG class map per frame")   \
  XX(masks_every, INT, 1, 1, 1000000000, NULL,                                 \
     "write the class map of every K-th processed frame")                      \
  XX(stats, STR, NULL, 0, 0, NULL, "JSON-lines statistics file")               \
  XX(stats_interval_ms, INT, 1000, 10, ST_CLIENT_MS_PER_DAY, NULL,             \
     "time between two statistics lines")                                      \
  XX(progress, ENUM, "auto", 0, 0, "auto|on|off",                              \
     "one-line progress display; auto: when stdout is a terminal")             \
  XX(connect_timeout_ms, INT, 5000, 1, ST_CLIENT_MS_PER_DAY, NULL,             \
     "at start, the server must be connected and answer within this")          \
  XX(handshake_timeout_ms, INT, 5000, 1, ST_CLIENT_MS_PER_DAY, NULL,           \
     "welcome (and model) must arrive within this after connecting")           \
  XX(reconnect_initial_ms, INT, 250, 1, ST_CLIENT_MS_PER_DAY, NULL,            \
     "first reconnection delay; doubles per failure")                          \
  XX(reconnect_max_ms, INT, 10000, 1, ST_CLIENT_MS_PER_DAY, NULL,              \
     "longest reconnection delay")                                             \
  XX(reconnect_jitter, NUM, 0.5, 0.0, 1.0, NULL,                               \
     "each delay is cut by a random fraction of up to this")                   \
  XX(ping_interval_ms, INT, 15000, 10, ST_CLIENT_MS_PER_DAY, NULL,             \
     "keep-alive ping period")                                                 \
  XX(server_timeout_ms, INT, 45000, 10, ST_CLIENT_MS_PER_DAY, NULL,            \
     "a connected server silent this long is dropped and reconnected")         \
  XX(max_message_bytes, INT, 16777216, ST_CLIENT_MAX_MESSAGE_BYTES_FLOOR,      \
     ST_CLIENT_MAX_MESSAGE_BYTES_CEILING, NULL,                                \
     "largest message accepted from the server")                               \
  XX(log_level, ENUM, "info", 0, 0, "error|warn|info|debug",                   \
     "least severe log line written to stderr")

/* One value per setting. Strings: empty with is_null set means null. */
typedef struct st_client_config {
#define ST__CFG_FIELD_STR(key) char key[ST_CLIENT_STR_BYTES + 1];
#define ST__CFG_FIELD(key, type, def, lo, hi, choices, help)                   \
  ST__CFG_FIELD_##type(key)
#define ST__CFG_FIELD_PATH(key) char key[ST_CLIENT_STR_BYTES + 1];
#define ST__CFG_FIELD_ENUM(key) char key[ST_CLIENT_STR_BYTES + 1];
#define ST__CFG_FIELD_INT(key) long long key;
#define ST__CFG_FIELD_NUM(key) double key;
#define ST__CFG_FIELD_BOOL(key) int key;
  ST_CLIENT_SETTINGS(ST__CFG_FIELD)
#undef ST__CFG_FIELD
} st_client_config;

/* Fills in every default. */
void st_client_config_defaults(st_client_config *c);
/* Reads a config file over *c (keys it lists replace c's values). */
int st_client_config_load(const char *path, st_client_config *c);
/* The same for JSON text; `label` names it in errors and `base_dir` is the
 * folder PATH settings are relative to ("" for none). */
int st_client_config_parse(const char *text, const char *label,
                           const char *base_dir, st_client_config *c);
/* Applies one command-line flag: `flag` is "--key-name" ("--no-key-name"
 * clears a boolean setting); for a non-boolean setting `value` is the next
 * argument (NULL when there is none). *used is
 * 1 when the value was consumed. ST_ENOENT for a flag that names no
 * setting. A value "null" sets a string setting to null. */
int st_client_config_flag(st_client_config *c, const char *flag,
                          const char *value, int *used);
/* Checks the values that need more than a range (HOST:PORT, WxH, that an
 * input is given); call after the flags. */
int st_client_config_check(const st_client_config *c);

/* Setting introspection, for --help and the docs. */
int st_client_setting_count(void);
const char *st_client_setting_key(int i);
const char *st_client_setting_help(int i);
/* 1 for a boolean setting (flags --KEY and --no-KEY, no value). */
int st_client_setting_is_bool(int i);
/* The default as JSON text ("90", "\"jpeg\"", "null"). */
void st_client_setting_default_json(int i, char *buf, size_t len);

/* "HOST:PORT" (HOST may be [v6]); host is written without the brackets. */
int st_client_parse_host_port(const char *text, char *host, size_t host_len,
                              int *port);
/* "WxH" with both sides in [1, ST_CLIENT_MAX_SIDE]. */
int st_client_parse_size(const char *text, int *width, int *height);

#endif
