#ifndef LIB_MAIL_LIMITS_H
#define LIB_MAIL_LIMITS_H
/* The ranges of UIDs, UIDNEXT and modseqs that any mailbox of any node
 * may hold (SPEC.md 5.2).  Storage refuses to go past them, and every
 * value that arrives from a peer, a sync or a bundle is checked against
 * them before anything is changed, so that one bad value cannot leave a
 * mailbox whose UIDNEXT or HIGHESTMODSEQ no longer fits the wire.
 *
 * Why these numbers:
 *  - UIDs stop at 2^31-1 although the wire carries 2^32-1: UIDNEXT, one
 *    above the highest UID, always fits in 32 bits without saturating;
 *    a sync that renumbers conflicts from max(UIDNEXT) up does its
 *    arithmetic far from the 32-bit wrap (it still checks the bound);
 *    and IMAP clients that keep UIDs in a signed 32-bit integer keep
 *    working.  No real mailbox uses two billion UIDs.
 *  - A new message (APPEND, COPY, delivery: a UID the master assigns)
 *    gets at most MAIL_UID_ASSIGN_MAX; the 2^24 UIDs above it are left
 *    for the syncs that move conflicting messages to fresh UIDs, so a
 *    mailbox whose UIDs ran out refuses new mail (NO [LIMIT]) but still
 *    syncs.  UIDs from peers may use the whole range: renumbered messages
 *    live there.
 *  - modseqs stop at 2^62-1 although IMAP's mod-sequence is 63 bits
 *    (RFC 7162, CONDSTORE): HIGHESTMODSEQ plus one, and any sum of a
 *    modseq and a count, stays a valid mod-sequence.  At a million
 *    changes a second a mailbox takes 146000 years to get there.
 * Every node uses the same bounds for what it assigns itself, so all that
 * a node sends, its peers accept. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAIL_UID_MAX UINT32_C(0x7fffffff)
#define MAIL_UIDNEXT_MAX (MAIL_UID_MAX + 1)
#define MAIL_UID_ASSIGN_MAX (MAIL_UID_MAX - (UINT32_C(1) << 24))
#define MAIL_MODSEQ_MAX ((UINT64_C(1) << 62) - 1)

/* The text of a refusal, NO [LIMIT] on the wire. */
#define MAIL_LIMITS_TEXT "a UID or modseq past the limits of SPEC 5.2"

/* A UID that names a message (not 0, "not assigned"). */
static inline bool mail_uid_valid(uint64_t uid)
{
	return uid >= 1 && uid <= MAIL_UID_MAX;
}

static inline bool mail_uidnext_valid(uint64_t uidnext)
{
	return uidnext >= 1 && uidnext <= MAIL_UIDNEXT_MAX;
}

/* 0 included: it means "none" or "assign one" where a field allows it. */
static inline bool mail_modseq_valid(uint64_t modseq)
{
	return modseq <= MAIL_MODSEQ_MAX;
}

static inline bool mail_uids_valid(const uint32_t *uids, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		if (!mail_uid_valid(uids[i]))
			return false;
	}
	return true;
}

#endif
