/* limits.h - the sizes and defaults that several services (and their clients) must agree on,
 * named once: the largest gRPC message on the internal links, keepalive timing, and the size
 * of buffers that hold a configured path plus a file name. */
#ifndef MX_LIMITS_H
#define MX_LIMITS_H

/* Largest message on any internal link (gateway -> stage, stage -> stage, stage -> expert
 * shard) unless configured (stage and router `max_message_mb`, up to 2047). One value for every
 * hop: a sender allowed more than its receiver accepts only fails later and further away.
 * A step's hidden states (rows x hidden_size x 4 bytes) are the largest messages. */
#define MX_DEFAULT_MAX_MESSAGE_MB 256
#define MX_DEFAULT_MAX_MESSAGE_BYTES (MX_DEFAULT_MAX_MESSAGE_MB << 20)
/* The configurable upper bound: gRPC takes message sizes as int. */
#define MX_MAX_MESSAGE_MB 2047

/* HTTP/2 keepalive on every channel and server: ping an idle peer this often, drop it when a
 * ping is unanswered this long; servers accept client pings this often (a client pinging
 * faster than the server allows gets GOAWAY, so the client's time must not be below it). */
#define MX_KEEPALIVE_TIME_MS 30000
#define MX_KEEPALIVE_TIMEOUT_MS 10000
#define MX_MIN_CLIENT_PING_MS 10000

/* A buffer for a configured directory (up to PATH_MAX, 4096 on Linux) plus a file name. */
#define MX_PATH_BUF 4200

#endif
