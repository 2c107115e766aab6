/* One run of the client daemon: the inference thread's side of
 * shadowtutor-client.
 *
 *   reader thread (video_in)  --bounded queue-->  inference thread (here)
 *   network thread (net)      <--key frames--     runs the student on every
 *                             --new weights-->    frame, Algorithm 4
 *                                                 (schedule), swaps weights
 *   writer thread (video_out) <--bounded queue--  in between frames
 *
 * This thread owns the student and its backend. It takes a frame, applies
 * every weight swap the network has handed over (so an update never lands
 * in the middle of a frame), decides with the schedule whether the frame is
 * a key frame or must wait for an overdue update, posts a key frame to the
 * network (which encodes and sends it while the student runs), runs the
 * student, and passes the frame and its class map to the writer. Statistics
 * go to --stats once per interval, and a progress line to a terminal.
 *
 * Ownership: st_client_run borrows the config and owns everything it
 * creates, released before it returns.
 */
#ifndef ST_CLIENT_RUN_H
#define ST_CLIENT_RUN_H

#include "client_config.h"

/* Process exit statuses. */
#define ST_CLIENT_EXIT_OK 0      /* the input ended, or a signal stopped it */
#define ST_CLIENT_EXIT_FAILURE 1 /* input, server, output or compute failed */
#define ST_CLIENT_EXIT_USAGE 2   /* bad command line or config */

/* Bytes of a weights file the client reads (the student is ~2 MB). */
#define ST_CLIENT_MAX_WEIGHTS_BYTES (256u * 1024u * 1024u)
/* Longest the inference thread sleeps in one wait (frames, updates), so
 * statistics, progress and signals are looked at this often. */
#define ST_CLIENT_WAIT_SLICE_MS 100
/* Progress display refreshes at most this often. */
#define ST_CLIENT_PROGRESS_MS 250
/* How long a closing client waits for the server's `bye`. */
#define ST_CLIENT_BYE_TIMEOUT_MS 1000

/* Runs until the input ends, a signal asks to stop (st_client_request_stop)
 * or something fails; prints the one-line reason of a failure on stderr.
 * Returns the exit status. */
int st_client_run(const st_client_config *cfg);
/* Async-signal-safe: ends the run after the current frame. */
void st_client_request_stop(void);

#endif
