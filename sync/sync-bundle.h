/* Change bundles (SPEC.md section 11): one user's mail carried between two
 * nodes that never meet on a network, as a signed, compressed file.
 *
 * A bundle holds the exporter's copy of the user: every mailbox with its
 * UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, every message (UID, GUID, modseq,
 * flags, date) with its text unless the state given to the export says the
 * other node holds it, every tombstone, and the subscriptions, written as
 * the command stream a sync client would send to an empty server.
 *
 * Import verifies the whole file (size, header, length, digest, signature,
 * source, replay) before it looks at the body, then loads the body into a
 * scratch store (a copy of the exporter's user, made in a temporary
 * directory; a malformed or hostile body fails there and the node's store
 * is not touched), and finally runs the sync engine (sync.h) with the
 * node's store as the client and the scratch copy as the server.  So a
 * bundle merges by exactly the rules of a network sync (UID conflicts
 * renumbered, flags and expunges by modseq, texts by GUID), and can only
 * ever reach the one user the engine was asked to sync.  The import then
 * returns the state file that the next export back should be given
 * (--since): it names the imported bundle (the base), the messages whose
 * texts the other node holds (the bundle back leaves those texts out), and
 * the messages the merge took over unchanged (the bundle back gives them
 * the other node's modseqs, SPEC.md 11.3). */
#ifndef SYNC_SYNC_BUNDLE_H
#define SYNC_SYNC_BUNDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "sync/sync.h"

struct stor_db;

/* Largest bundle file a verifier accepts by default (check 1). */
#define SYNC_BUNDLE_MAX_SIZE (1024ull * 1024 * 1024)
/* Largest state file (--since) an export reads. */
#define SYNC_BUNDLE_MAX_STATE_SIZE (64u * 1024 * 1024)
/* The per-peer sync state of a bundle source s is kept under peer key
 * SYNC_BUNDLE_PEER_BASE + s, apart from a network peer with the same SID.
 * Sources must be below it. */
#define SYNC_BUNDLE_PEER_BASE 0x80000000u

/* The key material: the cluster secret.  With user_key the bundle is
 * signed with the user key derived from it (KEY USER). */
struct sync_bundle_key {
	const unsigned char *secret;
	size_t secret_len;
	bool user_key;
};

struct sync_bundle_export_settings {
	const char *user;
	uint32_t source_sid;          /* this node */
	struct sync_bundle_key key;
	/* The state file an import here wrote (--since), or NULL: texts of
	 * the GUIDs it lists are left out. */
	const void *state;
	size_t state_len;
	int64_t created;              /* 0: now */
	/* The caller makes the export record durable (stor_on_durable(), the
	 * node's group commit) before it hands the bundle out; otherwise the
	 * export syncs the store itself. */
	bool durable_by_caller;
};

/* What an export wrote. */
struct sync_bundle_export_report {
	unsigned mailboxes, messages, tombstones;
	unsigned texts;               /* texts carried */
	unsigned texts_left_out;      /* texts the state said the other node holds */
};

/* Writes the bundle of set->user into out (appended).  Remembers the
 * bundle's digest in the store (stor_meta) so that an import of a bundle
 * made on top of it knows its base.  Returns 0, or -1 with *error_r (caller
 * frees). */
int sync_bundle_export(struct stor_db *db, const struct sync_bundle_export_settings *set,
		       struct buf *out, struct sync_bundle_export_report *report_r,
		       char **error_r);

/* Private \Seen (SPEC.md 7.7 "Bundles"): a change of user's records of
 * messages uids of owner's mailbox to seen, as user's STORE with SEEN-OF
 * user would make it.  Called during a step, before the state file is
 * made; the arguments are valid only during the call. */
typedef void sync_bundle_pseen_cb(void *ctx, const char *owner, const struct guid *mailbox,
				  const char *user, const uint32_t *uids, size_t count,
				  bool seen);

struct sync_bundle_pseen_report {
	unsigned records_applied;  /* newer than the importer's */
	unsigned records_skipped;  /* of messages the importer does not hold */
	unsigned mailboxes_skipped; /* not held here, or another UIDVALIDITY */
};

struct sync_bundle_import_settings {
	/* NULL: the records are changed in db itself (a node that masters
	 * them, or a store no node runs on). */
	sync_bundle_pseen_cb *pseen_apply;
	void *pseen_ctx;
	uint32_t own_sid;              /* this node: a bundle from it is refused */
	struct sync_bundle_key key;    /* the cluster secret (user_key unused) */
	/* A directory on which the scratch store is made (a fresh
	 * subdirectory, removed afterwards). */
	const char *scratch_parent;
	uint64_t max_size;             /* 0: SYNC_BUNDLE_MAX_SIZE */
	uint64_t max_message_size;     /* for the scratch store; 0: default */
	int64_t now;                   /* 0: the clock */
};

struct sync_bundle_import_result {
	char *user;                    /* the user the bundle was for */
	uint32_t source;               /* its SOURCE */
	bool base_known;               /* SINCE named one of our exports since
					* our last import from source */
	struct sync_report report;     /* the merge, as sync_client_report() */
	struct sync_bundle_pseen_report pseen;
	struct buf state;              /* the state file to give the next export */
};

/* Verifies data (a whole bundle file) and, only if every check passes,
 * merges it into db.  Returns 0, or -1 with *error_r (caller frees): when
 * the bundle is refused nothing in db has changed.  res_r is filled on
 * success; free it with sync_bundle_import_result_free() in both cases. */
int sync_bundle_import(struct stor_db *db, const struct sync_bundle_import_settings *set,
		       const void *data, size_t len, struct sync_bundle_import_result *res_r,
		       char **error_r);
void sync_bundle_import_result_free(struct sync_bundle_import_result *res);

/* The same import in bounded steps, for an event loop (a running node
 * goes on serving while it imports).  begin() runs checks 1 to 7 (the
 * whole file is hashed: about 2 s per GiB) and returns NULL with *error_r
 * when the bundle is refused; data must stay valid until destroy() (set
 * and the key need not).  step() loads about 1 MiB of the body into the scratch
 * copy, or does a few rounds of the merge, and returns 1 (call again),
 * SYNC_BUNDLE_IMPORT_WAIT (below), 0 (done: take the result) or -1
 * (*error_r, caller frees; refused without
 * any change while the body is being loaded).  destroy() at any point
 * stops the import (a merge stopped midway leaves what it applied, as a
 * sync that breaks off) and removes the scratch copy. */
struct sync_bundle_import;
struct sync_bundle_import *sync_bundle_import_begin(struct stor_db *db,
						    const struct sync_bundle_import_settings *set,
						    const void *data, size_t len, char **error_r);
int sync_bundle_import_step(struct sync_bundle_import *imp, char **error_r);
/* step() returns this once the merge is done and waits for the group
 * commit of db (stor_on_durable()): the loop's own syncs make it durable
 * (in storage's helper thread), and the wake callback, when set, says when
 * to call step() again.  Without a loop that syncs, call stor_sync(). */
#define SYNC_BUNDLE_IMPORT_WAIT 2
typedef void sync_bundle_wake_cb(void *ctx);
void sync_bundle_import_set_wake(struct sync_bundle_import *imp, sync_bundle_wake_cb *cb,
				 void *ctx);
/* After step() returned 0; free res_r with sync_bundle_import_result_free(). */
void sync_bundle_import_take_result(struct sync_bundle_import *imp,
				    struct sync_bundle_import_result *res_r);
void sync_bundle_import_destroy(struct sync_bundle_import **imp);
/* How far the import is, in one line for progress reports: "loading: X of
 * Y MiB" while the body is loaded, then "merging: N mailboxes checked, N
 * messages added, N flags changed". */
void sync_bundle_import_progress(const struct sync_bundle_import *imp, char *out, size_t size);

/* Wraps a command stream in the bundle format (header, zlib body, digest,
 * signature).  since_digest NULL means SINCE FULL.  Used by the export and
 * by tests and the fuzzer, which make bundles of their own. */
struct sync_bundle_header {
	const char *user;
	uint32_t source;
	int64_t created;
	int64_t since_created;
	const unsigned char *since_digest; /* 32 bytes, or NULL */
	/* 1 when the body uses what format 1.1 added (RSTAMP on CREATE),
	 * so that a bundle without it stays readable by a 1.0 reader. */
	unsigned minor;
};
void sync_bundle_seal(const struct sync_bundle_header *hdr, const struct sync_bundle_key *key,
		      const void *stream, size_t stream_len, struct buf *out,
		      unsigned char digest_r[32]);

#endif
