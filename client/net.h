/* The client's network side: one thread running its own libuv loop that
 * keeps a protocol v1 session with shadowtutor-server (docs/protocol.md).
 *
 * What it does:
 *  - connects (host names resolved with uv_getaddrinfo), sends `hello`
 *    (the SHA-256 of the base weights file when there is one, and
 *    `resume {session, version}` after the first session) followed by a
 *    `ping`, and calls the session up when the `pong` arrives: the server
 *    answers in order, so by then the `welcome` and any `model` are in;
 *  - adopts a `model` when the client holds no weights yet, holds the base
 *    version (0), or this is the first session (the server's base replaces
 *    the file); otherwise it keeps the weights it has, and its next key
 *    frame reports its version, which brings a full update;
 *  - sends the key frames the inference thread posts (JPEG-encoded on
 *    libuv's thread pool, or raw) on the session, stamped with the version
 *    the inference thread ran when it posted them;
 *  - decodes every message with st_msg_decode (sizes checked before any
 *    allocation), checks each tensor's name and shape against the student,
 *    applies an update all-or-nothing to its copy of the weights with the
 *    protocol's codec (st_codec_apply), and hands the new values of the
 *    changed tensors to the inference thread, which swaps them in between
 *    two frames. An update applies when it is `full` or its `base_version`
 *    is the client's version; any other one is ignored (counted; its
 *    stride still counts);
 *  - anything malformed or out of order (a bad body, an unknown tensor, a
 *    wrong shape, a non-finite weight, an update for a key frame never
 *    sent) is never trusted: counted, the connection dropped, and a new
 *    one made; so is a lost connection, a `bye` or a silent server;
 *  - reconnects with exponential backoff and jitter, and keeps pinging an
 *    idle session so the server's idle timeout never fires.
 * At start the first session must be up within connect_timeout_ms, or the
 * client fails with the reason (ST_NET_FAILED); a refusal the server
 * states as fatal (a wrong token, a frame size it does not accept) fails
 * at once.
 *
 * Threading: st_net_new starts the thread; st_net_post_keyframe,
 * st_net_next_event, st_net_get_counters, st_net_stop and st_net_free
 * are for the
 * inference thread (any one thread). Everything else, the libuv handles
 * included, belongs to the network thread; handles are closed with
 * uv_close and freed in their close callbacks.
 *
 * Ownership: the network keeps copies of the options and of the initial
 * weights. Events are the caller's after st_net_next_event and released
 * with st_net_event_free (the tensor values they carry included).
 */
#ifndef ST_CLIENT_NET_H
#define ST_CLIENT_NET_H

#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

/* Period of the network thread's housekeeping timer: deadlines, backoff,
 * pings and the silence check are this precise. */
#define ST_NET_TICK_MS 50
/* Bytes the socket reader takes per read call. */
#define ST_NET_READ_CHUNK_BYTES (64u * 1024u)
#define ST_NET_HOST_BYTES 255
#define ST_NET_REASON_BYTES 384

/* One tensor of the student, as updates must describe it. */
typedef struct st_net_tensor_desc {
  char name[ST_PROTO_TENSOR_NAME_BYTES + 1];
  int ndim;
  int64_t shape[ST_PROTO_MAX_NDIM];
  size_t numel;
} st_net_tensor_desc;

typedef struct st_net_options {
  char host[ST_NET_HOST_BYTES + 1];
  int port;
  char client_id[ST_PROTO_CLIENT_ID_BYTES + 1];
  char token[ST_PROTO_TOKEN_BYTES + 1];           /* "": none */
  char student_hash[ST_PROTO_HASH_HEX_BYTES + 1]; /* "": blank device */
  uint32_t width, height;                         /* of every key frame */
  st_frame_encoding keyframe_encoding;
  int jpeg_quality;
  int encoder_nice;             /* nice value of the JPEG encoding threads */
  int64_t connect_timeout_ms;   /* the first session, from st_net_new */
  int64_t handshake_timeout_ms; /* connect + welcome + pong, per attempt */
  int64_t reconnect_initial_ms, reconnect_max_ms;
  double reconnect_jitter; /* 0..1 */
  int64_t ping_interval_ms, server_timeout_ms;
  uint32_t max_message_bytes;
  uint64_t seed; /* of the jitter */
  size_t tensor_count;
  const st_net_tensor_desc *tensors; /* copied */
  const float *const *weights;       /* tensor_count host arrays (copied), or
                                        NULL for a blank device */
} st_net_options;

typedef enum st_net_event_kind {
  ST_NET_ONLINE = 0,     /* a session is up */
  ST_NET_OFFLINE,        /* it is gone (reason); reconnecting */
  ST_NET_WEIGHTS,        /* a model or an applied update: swap these in */
  ST_NET_UPDATE_IGNORED, /* an update for another version: stride only */
  ST_NET_KEY_LOST,       /* key frame `seq` was not sent, or was refused */
  ST_NET_FAILED,         /* the first session could not be made (reason) */
} st_net_event_kind;

typedef struct st_net_event {
  st_net_event_kind kind;
  struct st_net_event *next;
  /* ONLINE */
  char session[ST_PROTO_SESSION_BYTES + 1];
  int resumed; /* the server continued the previous session */
  int first;   /* the first session of this process */
  int32_t min_stride, max_stride;
  double threshold;
  /* ONLINE, WEIGHTS, UPDATE_IGNORED */
  int32_t stride;
  uint64_t version; /* ONLINE: the client's version; else the update's */
  /* WEIGHTS, UPDATE_IGNORED, KEY_LOST */
  uint64_t seq; /* key frame answered (0 for a model) */
  int is_model;
  int full;
  uint64_t base_version;
  double metric;
  int32_t steps;
  st_msg_timing timing;
  size_t count;   /* tensors carried */
  size_t *index;  /* their student tensor indices */
  float **values; /* their new values (numel floats each) */
  size_t bytes;   /* message bytes */
  /* OFFLINE, FAILED, KEY_LOST */
  int code; /* ST_E* */
  char reason[ST_NET_REASON_BYTES];
} st_net_event;

typedef struct st_net_counters {
  uint64_t bytes_up, bytes_down; /* on the wire, framing included */
  uint64_t connects;             /* TCP connections made */
  uint64_t sessions;             /* sessions up (welcome + pong) */
  uint64_t reconnects;           /* sessions after the first */
  uint64_t resumed;              /* of those, continued by the server */
  uint64_t keyframes_sent;
  uint64_t updates, updates_applied, updates_ignored;
  uint64_t models_adopted, models_ignored;
  uint64_t malformed;     /* messages never trusted */
  uint64_t server_errors; /* `error` messages received */
  int online;
} st_net_counters;

typedef struct st_net st_net;

/* Starts the network thread, which begins connecting at once. */
int st_net_new(const st_net_options *o, st_net **out);
/* Queues a key frame (rgb: width*height*3 bytes, copied). */
int st_net_post_keyframe(st_net *n, uint64_t seq, uint64_t frame_index,
                         uint64_t version, const uint8_t *rgb);
/* The next event, waiting up to timeout_ms (0: just look). NULL: none. */
st_net_event *st_net_next_event(st_net *n, int64_t timeout_ms);
void st_net_event_free(st_net_event *e);
void st_net_get_counters(st_net *n, st_net_counters *c);
/* Says `bye` (waiting up to bye_timeout_ms for the server's), closes
 * every handle and joins the thread; counters stay readable. */
void st_net_stop(st_net *n, int64_t bye_timeout_ms);
/* Stops (without waiting for a bye) if needed, and frees. Accepts NULL. */
void st_net_free(st_net *n);

#endif
