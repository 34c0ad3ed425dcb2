/* Internals shared by the files of imap/: the server, a client connection,
 * a running command, the selected mailbox, and the output helpers that the
 * command handlers (cmd-*.c) use.  Nothing outside imap/ includes this. */
#ifndef IMAP_IMAP_PRIVATE_H
#define IMAP_IMAP_PRIVATE_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

#include "imap/imap-parser.h"
#include "imap/imap-seqset.h"
#include "imap/imap-server.h"
#include "lib/arr.h"
#include "lib/buf.h"
#include "lib/config.h"
#include "replicator/repl.h"
#include "storage/storage.h"

/* Output: stop reading and producing above the high-water mark, resume
 * below the low-water mark. */
#define IMAP_OUT_HIGHWATER (1024 * 1024)
#define IMAP_OUT_LOWWATER (256 * 1024)
/* Raw input buffered ahead of the parser. */
#define IMAP_IN_MAX (64 * 1024)
/* Malformed commands in a row before we hang up. */
#define IMAP_MAX_BAD_IN_A_ROW 10
#define IMAP_TIMEOUT_PREAUTH 60.0
#define IMAP_TIMEOUT_AUTH (30.0 * 60)

struct imap_client;

typedef ARRAY(const char *) imap_str_array;

/* \Recent (RFC 3501 2.3.2) on this node: per mailbox, the lowest UID that no
 * session has been told about yet.  Session state: kept in memory only, not
 * replicated; a mailbox not in the table has told nobody anything (so after
 * a restart the first session to select it sees all its messages recent). */
struct imap_recent_entry {
	struct guid guid;
	uint32_t first_unclaimed; /* 0: empty slot */
};

struct imap_recent_table {
	struct imap_recent_entry *slots;
	size_t cap, used; /* cap a power of two, used <= cap / 2 */
};

struct imap_server {
	struct ev_loop *loop;
	const struct config *cfg;
	struct repl *repl;
	struct stor_db *db;
	SSL_CTX *ssl_ctx;
	int listen_fd[2];        /* plain, implicit TLS; -1 when unused */
	ev_io listen_io[2];
	ev_timer accept_retry;   /* after EMFILE and the like */
	struct imap_passwd_worker *passwd_worker;
	struct imap_client *clients;
	unsigned client_count;
	uint64_t next_id;
	bool stopping;
	struct imap_recent_table recent;
	struct imap_latency latency; /* for metrics_listen */
	/* acl_owner_rights: the owner's rights while no ACL record names
	 * them. */
	uint32_t owner_rights;
};

enum imap_client_state {
	IMAP_STATE_NOAUTH,
	IMAP_STATE_AUTH,
	IMAP_STATE_SELECTED,
	IMAP_STATE_LOGOUT,
};

/* A message in the selected mailbox's view (sequence number = index + 1). */
struct imap_own_change {
	uint32_t uid;
	uint64_t modseq;
};

/* CONTEXT=SEARCH contexts kept per selected mailbox (imap-search-update.c). */
struct imap_search_update;
#define IMAP_SEARCH_UPDATES_MAX 10

struct imap_selected {
	struct guid guid;
	char *name;
	char *owner;                /* the mailbox's user: another one's for shared/ */
	bool readonly;
	uint32_t uidvalidity;
	stor_uid_list uids;         /* ascending: the session's sequence map */
	uint64_t modseq;            /* changes up to here were reported */
	stor_uid_list pending_expunges; /* expunged, not yet reported */
	ARRAY(struct imap_own_change) own;  /* changes this session reported itself */
	stor_uid_list recent;       /* ascending: the UIDs \Recent in this session */
	size_t recent_reported;     /* the count in the last RECENT response sent */
	stor_string_list keywords;  /* announced in FLAGS to this session */
	/* SEARCHRES (RFC 5182): the result saved by SEARCH RETURN (SAVE), as
	 * ascending UIDs, so that expunged messages drop out by themselves
	 * (a UID not in the map no longer resolves).  Empty on SELECT. */
	stor_uid_list saved;
	ARRAY(struct imap_search_update *) updates; /* SEARCH RETURN (UPDATE) */
};

struct imap_cmd;
/* A handler or continuation: returns true when the command finished (it
 * sent the tagged reply through imap_cmd_done), false when it will finish
 * later (a repl completion or another continuation step). */
typedef bool imap_cmd_func(struct imap_cmd *cmd);

struct imap_cmd {
	struct imap_client *client;
	const char *tag;
	const char *name;
	bool uid;                    /* "UID FETCH" etc. */
	const struct imap_arg *args;
	size_t count;
	/* Called again when output has drained, while not waiting. */
	imap_cmd_func *cont;
	void *ctx;
	void (*ctx_free)(void *ctx);
	bool waiting;                /* a repl change is in flight */
	/* Read barriers (imap-barrier.c): how many are still out, the handler
	 * to run again, and whether they completed. */
	unsigned barrier_pending;
	imap_cmd_func *barrier_again;
	bool barrier_passed;
	bool no_expunge;             /* FETCH/STORE/SEARCH by sequence number */
	uint64_t started_us;         /* clock_mono_us() at dispatch; 0: not timed */
};

struct imap_out_piece {
	uint64_t at; /* out's bytes sent before it, counted by out_sent */
	struct stor_text_piece p;
	size_t sent;
};

/* Where the output stood, to take back what was added after it. */
struct imap_out_mark {
	size_t avail;
	size_t pieces;
};

struct imap_client {
	struct imap_server *server;
	struct imap_client *prev, *next;
	uint64_t id;
	int fd;
	ev_io io;
	ev_timer timer;
	ev_idle work;
	SSL *ssl;
	bool tls_handshake;          /* SSL_accept not finished */
	bool tls_want_write;
	bool greet_after_tls;        /* implicit TLS: greeting after handshake */
	bool starttls_pending;       /* start TLS once the OK is written */
	char peer[80];
	bool loopback;
	struct buf in, out;
	/* Texts sent from the store's mappings (imap_client_write_text),
	 * each after out's bytes up to its position in the output stream;
	 * out_sent counts out's bytes sent so far. */
	ARRAY(struct imap_out_piece) pieces;
	size_t pieces_next;          /* the first not yet sent */
	uint64_t pieces_bytes;       /* left to send of them */
	uint64_t out_sent;
	struct imap_parser *parser;
	enum imap_client_state state;
	char *user;
	unsigned bad_in_a_row;
	bool closing;                /* flush output, then close */
	bool input_eof;              /* the peer shut down its side */
	bool dead;                   /* fd closed; free when nothing is in flight */
	struct imap_cmd *cmd;        /* running command */
	/* IDLE and AUTHENTICATE read raw lines instead of commands. */
	char *idle_tag;
	char *auth_tag;
	bool condstore, qresync;
	bool rev2;                   /* ENABLE IMAP4rev2 (RFC 9051) */
	struct imap_selected *sel;
	unsigned logins_failed;
};

/* ---- imap-client.c ---- */
struct imap_client *imap_client_create(struct imap_server *srv, int fd, bool implicit_tls,
				       const char *peer, bool loopback);
/* Closes the connection now (or as soon as in-flight changes complete). */
void imap_client_destroy(struct imap_client *c);
/* Appends to the output and arms the writer. */
void imap_client_write(struct imap_client *c, const void *data, size_t len);
void imap_client_printf(struct imap_client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Output bytes not yet written. */
size_t imap_client_out_pending(const struct imap_client *c);
/* Queues a piece of a stored text after what is already in the output,
 * taking it over (released once sent, or with the client).  Only for a
 * connection without TLS (imap_client_can_send_pieces). */
void imap_client_write_text(struct imap_client *c, struct stor_text_piece *p);
bool imap_client_can_send_pieces(const struct imap_client *c);
struct imap_out_mark imap_client_out_mark(const struct imap_client *c);
/* Drops what was added to the output since mark. */
void imap_client_out_truncate(struct imap_client *c, struct imap_out_mark mark);
/* Schedules another round of work (input processing or a continuation). */
void imap_client_kick(struct imap_client *c);
/* After a BYE: flush what is queued, then close. */
void imap_client_close_after_output(struct imap_client *c);
bool imap_client_is_secure(const struct imap_client *c);
/* Starts TLS on the connection (after STARTTLS's OK was queued). */
int imap_client_start_tls(struct imap_client *c);
/* The timeout that applies in the current state. */
void imap_client_reset_timer(struct imap_client *c);
/* Plaintext LOGIN/AUTHENTICATE allowed on this connection now? */
bool imap_client_plaintext_ok(const struct imap_client *c);

/* Sends the tagged reply "TAG STATUS TEXT" (status "OK", "NO", "BAD"),
 * after reporting pending changes of the selected mailbox, and finishes the
 * command.  Returns true for handlers to return. */
bool imap_cmd_done(struct imap_cmd *cmd, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Ends the command without a tagged reply: the client continues in a line
 * mode (IDLE, AUTHENTICATE) that replies later. */
void imap_cmd_detach(struct imap_cmd *cmd);
/* Same for a text without format (e.g. an error from storage). */
bool imap_cmd_done_str(struct imap_cmd *cmd, const char *status, const char *text);

/* ---- imap-passwd-worker.c: password checks on a worker thread ---- */
struct imap_passwd_worker;
/* result as passwd_verify(): 1 match, 0 no match, -1 error (error set). */
typedef void imap_passwd_cb(void *ctx, int result, const char *error);
struct imap_passwd_worker *imap_passwd_worker_create(struct ev_loop *loop);
/* Stops the thread; pending callbacks are dropped without being called. */
void imap_passwd_worker_destroy(struct imap_passwd_worker **w);
/* Queues a check; cb runs later on the loop (never inside this call). */
void imap_passwd_check(struct imap_passwd_worker *w, const char *path, const char *user,
		       const char *password, const char *other_hash, imap_passwd_cb *cb, void *ctx);

/* ---- imap-commands.c ---- */
void imap_commands_dispatch(struct imap_client *c, const struct imap_command *pc);
/* The capability list for the connection's state (no leading "CAPABILITY"). */
void imap_capabilities(struct imap_client *c, struct buf *out);

/* ---- imap-sync.c: the selected mailbox ---- */
/* Opens mb as the selected mailbox (replacing any); fills the UID map. */
int imap_sel_open(struct imap_client *c, const struct stor_mailbox *mb, bool readonly,
		  uint32_t *first_unseen_r, const char **error_r);
void imap_sel_close(struct imap_client *c);
/* Reports changes made since the last report (EXPUNGE/VANISHED only when
 * allowed, EXISTS, FETCH FLAGS). */
void imap_sync(struct imap_client *c, bool allow_expunge);
/* 1-based sequence number of uid, or 0. */
uint32_t imap_sel_seq(const struct imap_selected *sel, uint32_t uid);
/* Remember that this session reported (uid, modseq) itself. */
void imap_sel_own_change(struct imap_selected *sel, uint32_t uid, uint64_t modseq);
/* Resolves a sequence set or UID set argument to ascending UIDs that are in
 * the session's map; "$" is the saved result (RFC 5182) in both forms.
 * Returns 0, or -1 for a bad set. */
int imap_sel_resolve(struct imap_selected *sel, const char *set, bool uid, stor_uid_list *uids_r);
/* A CONDSTORE-enabling command (RFC 7162 3.1): the first one in a
 * selected mailbox also sends OK [HIGHESTMODSEQ n]. */
void imap_enable_condstore(struct imap_client *c);
/* Replaces the saved result (RFC 5182) with uids[0..n) (ascending). */
void imap_sel_save_result(struct imap_selected *sel, const uint32_t *uids, size_t n);
/* Sends the untagged FLAGS and PERMANENTFLAGS with the keywords announced
 * so far. */
void imap_sel_send_flags(struct imap_client *c);
/* Before a FETCH shows keywords: announces those the session has not been
 * told of in FLAGS (RFC 3501 7.2.6; clients reject unannounced ones). */
void imap_sel_announce_keywords(struct imap_client *c, const stor_string_list *keywords);
/* Whether uid is \Recent in this session. */
bool imap_sel_is_recent(const struct imap_selected *sel, uint32_t uid);
/* The lowest UID of mailbox no session on this node has seen (1 if none). */
uint32_t imap_recent_first(struct imap_server *srv, const struct guid *mailbox);
void imap_recent_free(struct imap_server *srv);
/* Watcher for repl changes (registered by the server). */
void imap_sync_notify(void *ctx, const char *user, const struct guid *mailbox);

/* ---- imap-search-update.c: CONTEXT=SEARCH (RFC 5267) ---- */
struct imap_search;
/* Keeps a context for tag (replacing one of the same tag) with the search
 * program (taken: *search becomes NULL) and its current result (ascending
 * UIDs).  Returns 0, or -1 when the session has too many contexts. */
int imap_search_update_add(struct imap_selected *sel, const char *tag, bool uid,
			   struct imap_search **search, const uint32_t *uids, size_t n);
/* The same for SORT RETURN (UPDATE) (CONTEXT=SORT): entries[0..n) in sort
 * order are taken (their strings; the caller frees only the array) when it
 * returns 0; ADDTO/REMOVEFROM then give positions in the sort order. */
struct imap_sort_program;
struct imap_sort_entry;
int imap_search_update_add_sorted(struct imap_selected *sel, const char *tag, bool uid,
				  struct imap_search **search, const struct imap_sort_program *prog,
				  struct imap_sort_entry *entries, size_t n);
/* Returns 0, or -1 if no context has that tag. */
int imap_search_update_cancel(struct imap_selected *sel, const char *tag);
/* The messages in msgs changed or are new (and are in the map): sends
 * ADDTO/REMOVEFROM for each context whose result they change. */
void imap_search_updates_changed(struct imap_client *c, const stor_msg_list *msgs);
/* uids (ascending) are about to be expunged from the session's view:
 * sends REMOVEFROM while their sequence numbers are still valid. */
void imap_search_updates_expunge(struct imap_client *c, const stor_uid_list *uids);
void imap_search_updates_free(struct imap_selected *sel);

/* ---- imap-util.c ---- */
/* Index of the first UID >= uid in the ascending list l (l->count when
 * there is none). */
size_t imap_uid_lower_bound(const stor_uid_list *l, uint32_t uid);
/* Whether the ascending list l holds uid. */
bool imap_uid_list_has(const stor_uid_list *l, uint32_t uid);
/* A mailbox name argument as imap_mailbox_name() makes it, from UTF-8 for
 * an IMAP4rev2 client (names are stored in modified UTF-7). */
char *imap_client_mailbox_name(const struct imap_client *c, const char *name, size_t len,
			       const char **error_r);
/* The session's form of a stored mailbox name (malloc'd): UTF-8 for an
 * IMAP4rev2 client, else as stored. */
char *imap_client_mailbox_display(const struct imap_client *c, const char *name);
/* Appends a stored mailbox name in the session's form. */
void imap_append_mailbox(const struct imap_client *c, struct buf *out, const char *name);
/* Appends s as an atom-safe string, a quoted string or a literal. */
void imap_append_astring(struct buf *out, const char *s, size_t len);
/* Quoted or literal (never an atom), or NIL for NULL. */
void imap_append_nstring(struct buf *out, const char *s, size_t len);
/* The flag list; recent adds \Recent (a session flag, never stored). */
void imap_append_flags(struct buf *out, uint32_t flags, const stor_string_list *keywords,
		       bool recent);
/* "dd-Mon-yyyy hh:mm:ss +zzzz" in quotes. */
void imap_append_internaldate(struct buf *out, int64_t t, int32_t tz_min);
/* Parses an IMAP date-time ("dd-Mon-yyyy hh:mm:ss +zzzz"). */
int imap_parse_datetime(const char *s, int64_t *t_r, int32_t *tz_r);
/* Parses a search date ("d-Mon-yyyy") to the epoch second of its midnight UTC. */
int imap_parse_date(const char *s, int64_t *t_r);
/* System flag bit for "\Seen" etc. (case-insensitive), 0 if not one. */
uint32_t imap_flag_bit(const char *name);
/* A keyword is an atom without '\\' or ']' etc. */
bool imap_keyword_valid(const char *s);
/* Parses a flag list argument (list or single atom) into bits and keywords
 * (strings borrowed from the args).  Returns 0 or -1 (*error_r). */
int imap_parse_flags(const struct imap_arg *arg, uint32_t *flags_r,
		     imap_str_array *keywords_r, bool allow_recent, const char **error_r);
/* Turns a client's mailbox name into the stored one: INBOX (any case, and
 * as the top of a hierarchy) becomes "INBOX"; checks modified UTF-7 and
 * length.  Returns a new string or NULL (*error_r). */
char *imap_mailbox_name(const char *name, size_t len, const char **error_r);
/* "[NONEXISTENT] " etc. for a seam error, with a trailing space. */
const char *imap_repl_error_code(enum repl_error e);
/* A seam completion that finishes cmd with "OK <NAME> completed" or NO. */
void imap_cmd_repl_done(void *ctx, const struct repl_result *res);
/* Converts an argument to a C string, NULL if it is a list or contains a
 * NUL byte. */
const char *imap_arg_cstr(const struct imap_arg *arg);

#endif
