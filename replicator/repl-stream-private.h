/* Shared by the files of the replication log and its streaming
 * (repl-log.c, repl-stream.c, repl-peer-holds.c, repl-bind.c,
 * repl-waiters.c): the functions one of them calls in another.  Their structs are repl-cluster-private.h's;
 * only those files include this. */
#ifndef REPLICATOR_REPL_STREAM_PRIVATE_H
#define REPLICATOR_REPL_STREAM_PRIVATE_H

#include "replicator/repl-cluster-private.h"

/* repl-log.c */
uint64_t wall_ms(void);

/* repl-peer-holds.c */
void full_sync_store(struct cl_peer *p);
void dirty_store(struct cl_peer *p);
void list_add(stor_string_list *l, const char *s);
void load_peer(struct cl_peer *p);
void unheld_add(struct cl_peer *p, const char *user, uint64_t first, uint64_t need);
bool peer_holds(const struct cl_peer *p, const char *user, uint64_t seq);
void unheld_clear(struct cl_peer *p);
void unheld_all(struct cl_peer *p);
void advance(struct cl_peer *p);
void send_stream_cmd(struct cl_peer *p, uint64_t seq, const char *user);
void wr_origin(struct cl_peer *p, struct proto_wr *w);

/* repl-bind.c */
void binds_clear(struct cl_peer *p, bool keep_pending);

/* repl-waiters.c */
bool peer_healthy(const struct repl_cluster *cl, const struct cl_peer *p, uint64_t now);
bool peer_holds_all(const struct cl_peer *p, uint64_t seq);
uint64_t under_count(const struct repl_cluster *cl);
void unheld_retry(struct repl_cluster *cl);

#endif
