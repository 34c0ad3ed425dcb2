/* The replicating implementation of the seam (repl.h), used when peers are
 * configured.
 *
 * Every change to a mailbox goes to the mailbox's master (repl-mm.h): on
 * the master it is applied, written to the persistent replication log and
 * streamed to every peer (repl-stream.c); elsewhere it is forwarded to the
 * master over the peer link and applied locally from the master's answer.
 * A change completes (the IMAP client gets OK) once it is durable here, on
 * the master, and on sync_replicas peers (fewer when fewer peers are up:
 * the node stays available and says so in `starling status`).  When the
 * master cannot be reached the change is made here autonomously and the
 * user is resynced with the peers later (repl-sync.h).  Mailbox CREATE,
 * DELETE, RENAME and (UN)SUBSCRIBE are made where they are asked and
 * streamed to every peer the same way.
 *
 * Typical use in starlingd:
 *
 *   repl = repl_cluster_create(loop, db, &set, cfg);
 *   mm = repl_mm_create(...); sync = repl_sync_create(loop, repl);
 *   repl_peers_create(... callbacks that call repl_cluster_link_* ...);
 *   repl_cluster_attach(repl, peers, mm, sync);
 *   ...
 *   repl_destroy(&repl);   (after the loop; before mm, sync and peers)
 */
#ifndef REPLICATOR_REPL_CLUSTER_H
#define REPLICATOR_REPL_CLUSTER_H

#include "lib/buf.h"
#include "lib/config.h"
#include "replicator/repl.h"

struct proto_conn;
struct repl_peers;
struct repl_mm;
struct repl_sync;

/* db and cfg must outlive the repl. */
struct repl *repl_cluster_create(struct ev_loop *loop, struct stor_db *db,
				 const struct repl_settings *set, const struct config *cfg);
/* Starts replicating over peers, asking mm for masters and queueing
 * resyncs on sync; registers the live replication hook on sync. */
void repl_cluster_attach(struct repl *r, struct repl_peers *peers, struct repl_mm *mm,
			 struct repl_sync *sync);
/* Before mm, sync and peers are destroyed at shutdown: forgets them;
 * changes in flight finish locally. */
void repl_cluster_detach(struct repl *r);
/* To be called from the peer manager's link callbacks. */
void repl_cluster_link_up(struct repl *r, uint32_t sid, struct proto_conn *conn);
void repl_cluster_link_down(struct repl *r, uint32_t sid);
/* After SIGHUP changed cfg's peers: replicate to the new ones too. */
void repl_cluster_peers_changed(struct repl *r);
/* Appends the STATUS lines of replication (README lists them). */
void repl_cluster_status(struct repl *r, struct buf *out);

#endif
