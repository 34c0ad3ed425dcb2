/* Private \Seen on the wire (SPEC.md 7.7): typed codecs of PSEEN,
 * PSEEN-MBOX and STORE's SEEN-OF option, with the bounds every receiver
 * applies, so that a stream, a sync and a bundle read them alike. */
#include "protocol/protocol.h"

#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"

static int bad(const char **error_r, const char *text)
{
	*error_r = text;
	return PROTO_CODEC_BAD;
}

/* Kept here rather than taken from lib/passwd.c so that protocol/ needs
 * nothing of authentication; tests hold both to the same alphabet. */
bool proto_user_name_valid(const char *s, size_t len)
{
	if (len == 0 || len > PROTO_MAX_USER_LEN || s[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '@' || c == '+' || c == '-'))
			return false;
	}
	return true;
}

static int read_user(const struct proto_arg *a, bool public_ok, char out[PROTO_MAX_USER_LEN + 1])
{
	const char *s;
	size_t len;
	/* A literal is never needed for a name, and would let NULs in. */
	if (a->type == PROTO_ARG_LIST || a->type == PROTO_ARG_LITERAL ||
	    proto_arg_str(a, &s, &len) < 0)
		return -1;
	if (!proto_user_name_valid(s, len) && !(public_ok && len == 7 && memcmp(s, ".public", 7) == 0))
		return -1;
	memcpy(out, s, len);
	out[len] = '\0';
	return 0;
}

int proto_read_pseen(const struct proto_cmd *cmd, enum proto_pseen_rule rule,
		     struct proto_pseen *p_r, const char **error_r)
{
	uint64_t seen, time_ms;
	memset(p_r, 0, sizeof(*p_r));
	if (cmd->arg_count < 5)
		return bad(error_r, "PSEEN user guid seen modseq time-ms");
	if (read_user(&cmd->args[0], false, p_r->user) < 0)
		return bad(error_r, "bad user name");
	if (proto_arg_guid(&cmd->args[1], &p_r->guid) < 0 || guid_is_zero(&p_r->guid))
		return bad(error_r, "bad message GUID");
	if (proto_arg_u64(&cmd->args[2], 1, &seen) < 0)
		return bad(error_r, "seen is 0 or 1");
	p_r->seen = seen == 1;
	if (proto_arg_u64(&cmd->args[3], INT64_MAX, &p_r->modseq) < 0)
		return bad(error_r, "bad modseq");
	if (proto_arg_u64(&cmd->args[4], INT64_MAX, &time_ms) < 0)
		return bad(error_r, "bad time-ms");
	p_r->time_ms = (int64_t)time_ms;
	if (rule == PROTO_PSEEN_ASSIGN && p_r->modseq != 0)
		return bad(error_r, "a bundle's record has modseq 0");
	if (rule == PROTO_PSEEN_GIVEN && p_r->modseq == 0)
		return bad(error_r, "modseq 0 where the record's is given");
	if (rule == PROTO_PSEEN_GIVEN && !mail_modseq_valid(p_r->modseq)) {
		*error_r = MAIL_LIMITS_TEXT;
		return PROTO_CODEC_LIMIT;
	}
	return PROTO_CODEC_OK;
}

void proto_wr_pseen(struct proto_wr *w, const struct proto_pseen *p)
{
	proto_wr_str(w, p->user, strlen(p->user));
	proto_wr_guid(w, &p->guid);
	proto_wr_u64(w, p->seen ? 1 : 0);
	proto_wr_u64(w, p->modseq);
	proto_wr_u64(w, (uint64_t)p->time_ms);
}

int proto_read_pseen_mbox(const struct proto_cmd *cmd, struct proto_pseen_mbox *m_r,
			  const char **error_r)
{
	memset(m_r, 0, sizeof(*m_r));
	if (cmd->arg_count < 3)
		return bad(error_r, "PSEEN-MBOX owner mailbox-guid uidvalidity");
	if (read_user(&cmd->args[0], true, m_r->owner) < 0)
		return bad(error_r, "bad owner name");
	if (proto_arg_guid(&cmd->args[1], &m_r->mailbox) < 0 || guid_is_zero(&m_r->mailbox))
		return bad(error_r, "bad mailbox GUID");
	if (proto_arg_u32(&cmd->args[2], &m_r->uidvalidity) < 0 || m_r->uidvalidity == 0)
		return bad(error_r, "bad UIDVALIDITY");
	return PROTO_CODEC_OK;
}

void proto_wr_pseen_mbox(struct proto_wr *w, const struct proto_pseen_mbox *m)
{
	proto_wr_str(w, m->owner, strlen(m->owner));
	proto_wr_guid(w, &m->mailbox);
	proto_wr_u64(w, m->uidvalidity);
}

int proto_read_seen_of(const struct proto_cmd *cmd, size_t npos, const char **user_r,
		       const char **error_r)
{
	*user_r = NULL;
	const struct proto_arg *a = proto_cmd_option(cmd, npos, "SEEN-OF");
	if (a == NULL)
		return PROTO_CODEC_OK;
	const char *s;
	size_t len;
	if (a->type == PROTO_ARG_LIST || a->type == PROTO_ARG_LITERAL ||
	    proto_arg_str(a, &s, &len) < 0 || !proto_user_name_valid(s, len))
		return bad(error_r, "SEEN-OF names no valid user");
	if (proto_cmd_option(cmd, npos, "GUIDS") == NULL)
		return bad(error_r, "SEEN-OF needs GUIDS");
	*user_r = s;
	return PROTO_CODEC_OK;
}
