/* The node configuration file (`key = value` lines, `#` comments).
 *
 * The keys are those of DESIGN.md plus a few documented in the README.
 * `peer` may repeat; every other key may appear once.  Errors name the file
 * and line: "starling.conf:7: unknown key 'nodeid'". */
#ifndef LIB_CONFIG_H
#define LIB_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "lib/arr.h"
#include "lib/log.h"

struct config_addr {
	char *host; /* NULL when not configured */
	uint16_t port;
};

struct config_peer {
	uint32_t sid;
	struct config_addr addr;
};

enum config_granularity {
	CONFIG_GRAN_MAILBOX,
	CONFIG_GRAN_USER,
	CONFIG_GRAN_DOMAIN,
	CONFIG_GRAN_GLOBAL,
};

/* What a change gets when fewer than sync_replicas healthy replicas can
 * hold it (README "degraded_writes", SPEC.md 8.6). */
enum config_degraded_writes {
	CONFIG_DEGRADED_ACCEPT,    /* OK, counted as under-replicated until held */
	CONFIG_DEGRADED_REFUSE,    /* NO [UNAVAILABLE] */
};

/* What SELECT, EXAMINE and STATUS show on a node that is not the mailbox's
 * master (README "read_consistency"). */
enum config_read_consistency {
	CONFIG_READ_MASTER,        /* at least what the master had when asked */
	CONFIG_READ_LOCAL,         /* this node's state as it is */
};

enum config_plaintext_auth {
	CONFIG_PLAINTEXT_LOOPBACK, /* plaintext LOGIN only over TLS or from loopback */
	CONFIG_PLAINTEXT_ALWAYS,
	CONFIG_PLAINTEXT_NEVER,    /* only over TLS */
};

struct config {
	char *path;
	uint32_t node_id;
	char *data_dir;
	struct config_addr imap_listen;
	struct config_addr imaps_listen;
	struct config_addr repl_listen;
	ARRAY(struct config_peer) peers;
	char *cluster_secret_file;
	char *users_file;
	unsigned sync_replicas;
	enum config_granularity master_granularity;
	char *tls_cert, *tls_key, *tls_ca;
	enum log_level log_level;
	/* Largest message text accepted, in bytes (default 64 MiB). */
	uint64_t max_message_size;
	enum config_plaintext_auth plaintext_auth;
	/* Replication log entries kept per peer before it is marked for a
	 * full sync instead. */
	uint64_t repl_log_max;
	enum config_degraded_writes degraded_writes;
	enum config_read_consistency read_consistency;
	/* shared_seen = private (the default) or shared (SPEC.md 7.7): the
	 * same on every node of a cluster. */
	bool shared_seen_private;
	/* acl_owner_rights as written (NULL: unset, every right) and its
	 * line.  Rights letters are not lib's business: starlingd and
	 * starling check the value with acl_owner_rights_parse() at start-up
	 * and report it as FILE:LINE. */
	char *acl_owner_rights;
	unsigned acl_owner_rights_line;
	/* LMTP (lmtp/): TCP address, or a UNIX socket path (the value
	 * starts with '/'); both unset when LMTP is off. */
	struct config_addr lmtp_listen;
	char *lmtp_socket;
	/* user+detail@domain delivers to the mailbox named detail when the
	 * user has one (otherwise INBOX). */
	bool lmtp_detail_mailbox;
	/* Prometheus text metrics over HTTP at /metrics; host NULL: off. */
	struct config_addr metrics_listen;
};

/* What config_print() shows for an unset acl_owner_rights. */
#define CONFIG_DEFAULT_ACL_OWNER_RIGHTS "lrswipkxtea"
#define CONFIG_DEFAULT_MAX_MESSAGE_SIZE (64ull * 1024 * 1024)
/* Bytes a cluster_secret_file must hold (one trailing newline aside). */
#define CONFIG_SECRET_MIN 32u
#define CONFIG_SECRET_MAX 4096u
#define CONFIG_DEFAULT_REPL_LOG_MAX 100000ull
#define CONFIG_MAX_PEERS 64

/* Reads and validates path.  Returns a new config, or NULL with a one-line
 * message in *error_r (the caller frees it). */
struct config *config_load(const char *path, char **error_r);
/* Parses config text as if it came from a file named path; for tests. */
struct config *config_parse(const char *path, const char *text, char **error_r);
void config_free(struct config **cfg);

/* Parses "HOST:PORT" or "[V6ADDR]:PORT".  Returns 0 or -1. */
int config_parse_addr(const char *s, struct config_addr *addr_r);
const char *config_granularity_name(enum config_granularity g);
const char *config_degraded_writes_name(enum config_degraded_writes d);
const char *config_read_consistency_name(enum config_read_consistency r);
/* The effective configuration as `key = value` lines (`starlingd -n`):
 * every key, defaults included. */
void config_print(const struct config *c, FILE *out);

#endif
