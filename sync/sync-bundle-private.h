/* Shared by the files of change bundles (sync-bundle*.c): the format's
 * limits, and the records and loader state more than one step of export,
 * verification and import reads.  Only those files include it. */
#ifndef SYNC_SYNC_BUNDLE_PRIVATE_H
#define SYNC_SYNC_BUNDLE_PRIVATE_H

#include "sync/sync-bundle.h"

#include <stdbool.h>
#include <stdint.h>

#include <zlib.h>

#include "sync/sync-private.h"

#define BUNDLE_MAGIC "STARLING-BUNDLE "
#define BUNDLE_MAX_HEADER 4096
#define BUNDLE_TRAILER_LEN (15 + 64 + 2 + 22 + 64 + 2)
#define BUNDLE_FUTURE_SLACK (24 * 3600)
#define STATE_MAGIC "STARLING-BUNDLE-STATE 1"
/* Exports remembered for the base check (SINCE). */
#define BUNDLE_EXPORTS_KEPT 32
/* UIDs in one EXPUNGE of a bundle. */
#define BUNDLE_MAX_EXPUNGE_UIDS 1000000

struct last_import {
	uint64_t counter;
	int64_t created;
	char digest_hex[65];
	/* The value as stored: the first line, then "D <digest hex>" lines
	 * of earlier imports. */
	struct buf raw;
};

/* A message whose state an import here took over unchanged from the bundle
 * (same UID, GUID, flags and keywords): the merge may have given it a new
 * modseq here and in the scratch copy, but not on the other node.  While it
 * keeps that modseq here, the next export back writes the bundle's modseq
 * for it, so that the other node's own later change of the message (whose
 * modseq may be below ours) still wins over a state it already had. */
struct adopt {
	struct guid mailbox;
	uint32_t uid;
	uint64_t bundle_modseq, our_modseq;
};
typedef ARRAY(struct adopt) adopt_array;

/* A message whose text the other node holds: the GUID it had at that UID
 * of that mailbox in the bundle imported here. */
struct held {
	struct guid mailbox;
	uint32_t uid;
	struct guid guid;
};
typedef ARRAY(struct held) held_array;

/* PSEEN-BASE <mailbox-guid> <modseq> (SPEC.md 7.7 "Bundles"): the export
 * back carries only the user's records of that mailbox above it. */
struct pseen_base {
	struct guid mailbox;
	uint64_t modseq;
};

struct bundle_state {
	int64_t base_created;
	unsigned char base_digest[32];
	held_array texts;
	adopt_array adopts;
	ARRAY(struct pseen_base) pseen_bases;
};

/* PSEEN lines of a bundle, and the PSEEN-MBOX it holds: at most this many
 * lines in all (as a sync, SPEC.md 7.7). */
#define BUNDLE_MAX_PSEEN_LINES 100000
struct ld_pseen_rec {
	struct guid guid;
	bool seen;
	int64_t time_ms;
};
struct ld_pseen_mbox {
	char *owner;
	struct guid mailbox;
	uint32_t uidvalidity;
	ARRAY(struct ld_pseen_rec) recs;
	bool held; /* the importer holds it with that UIDVALIDITY */
};

struct verified {
	char user[STOR_MAX_USER_LEN + 1];
	uint32_t source;
	int64_t created;
	bool since_full;
	int64_t since_created;
	char since_hex[65];
	bool user_key;
	uint64_t comp_len, raw_len;
	size_t header_len;
	char digest_hex[65];
};

struct srv_id {
	uint32_t id;
	struct guid guid;
};

/* A SAVE of the command stream, parsed. */
struct ld_msg {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	struct sync_flags f;
	stor_stamp_list stamps;  /* as the bundle has them, or legacy */
	int64_t date;
	int tz;
};

struct ld_snap {
	struct guid mailbox;
	stor_msg_list msgs;
};

struct loader {
	struct stor_db *db, *scratch;
	const struct verified *v;
	uint64_t max_message_size;
	struct proto_parser *parser;
	unsigned next_tag;
	ARRAY(struct srv_id) ids;
	bool selected, in_sync;
	struct guid sel;
	uint32_t uidnext;
	uint64_t hms;
	size_t gone; /* GONE GUIDs of the mailbox being loaded */
	stor_uid_list placeholders;
	/* A SAVE with NIL held back until the next command says whether it
	 * is a tombstone (see ld_tomb_hides_move()). */
	struct ld_msg pending;
	bool pending_active;
	/* Every mailbox's messages as the bundle has them, for the ADOPT
	 * lines of the state file. */
	ARRAY(struct ld_snap) snaps;
	/* The user's private \Seen records, after the last mailbox. */
	ARRAY(struct ld_pseen_mbox) pseen;
	size_t pseen_lines;
	char *error;
};

/* The inflater, kept across steps. */
struct inflater {
	z_stream z;
	bool started;
	const unsigned char *in;
	uint64_t in_left, produced, raw_len;
	unsigned char *out;
};

/* sync-bundle.c */
char *fmt_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void signing_key(const struct sync_bundle_key *key, bool user_key, const char *user,
		 unsigned char *out, size_t *len_r, const unsigned char **key_r);
void bundle_signature(const unsigned char *key, size_t key_len,
		      const unsigned char digest[32], unsigned char out[32]);

/* sync-bundle-state.c */
int exports_remember(struct stor_db *db, const char *user, const unsigned char digest[32],
		     char **error_r);
int exports_find(struct stor_db *db, const char *user, const char *digest_hex,
		 uint64_t *ctr_r, char **error_r);
int last_import_get(struct stor_db *db, uint32_t source, const char *user,
		    struct last_import *li_r, char **error_r);
bool last_import_has(const struct last_import *li, const char *digest_hex);
int last_import_set(struct stor_db *db, uint32_t source, const char *user,
		    int64_t created, const char *digest_hex, char **error_r);
int adopt_cmp(const void *a, const void *b);
int held_cmp(const void *a, const void *b);
void state_free(struct bundle_state *st);
int state_parse(const void *data, size_t len, const char *user,
		struct bundle_state *st_r, char **error_r);
void write_state(struct buf *out, const char *user, uint32_t peer, int64_t created,
		 const char *digest_hex, const struct buf *texts, const struct buf *adopts,
		 const struct buf *pseen_bases);

/* sync-bundle-verify.c */
int verify(struct stor_db *db, const struct sync_bundle_import_settings *set,
	   const unsigned char *data, size_t len, struct verified *v, char **error_r);

/* sync-bundle-load.c */
void ld_pending_clear(struct loader *l);
int ld_inflate_step(struct loader *l, struct inflater *f, size_t budget);
void inflater_free(struct inflater *f);

/* sync-bundle-pseen.c */
struct proto_wr;
int bundle_pseen_export(struct stor_db *db, const char *user, const struct bundle_state *st,
			void (*line_begin)(void *ctx, const char *name), void (*line_end)(void *ctx),
			struct proto_wr *w, void *ctx, char **error_r);
int bundle_pseen_load(struct loader *l, const struct proto_cmd *cmd, const char **error_r);
int bundle_pseen_load_end(struct loader *l, const char **error_r);
void bundle_pseen_free(struct loader *l);
int bundle_pseen_apply(struct stor_db *db, struct loader *l, sync_bundle_pseen_cb *cb, void *ctx,
		       struct sync_bundle_pseen_report *rep, char **error_r);
void bundle_pseen_write_bases(struct stor_db *db, const struct loader *l, struct buf *out);

#endif
