/* libFuzzer harness for mailbox-master: the wire parser and the state
 * machine under hostile messages.
 *
 * Each input line is parsed with mm_msg_parse(); a line that parses is
 * written back and parsed again, and must give the same line.  Parsed
 * messages are then fed to node 1 of a three-node view (links to 2 and 3),
 * as if from peer 2 or 3, interleaved with ticks and local requests chosen
 * by the line's length, so the state machine meets every kind of nonsense
 * a compromised peer could send.  It must neither crash nor leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "mailbox-master/mm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mm_settings set;
	struct mm_output out;
	struct buf w1 = BUF_INIT, w2 = BUF_INIT;
	uint64_t now = 1000;

	mm_settings_default(&set, 1);
	set.retry_ms = 10;
	struct mm_node *node = mm_node_create(&set, now);
	mm_link_up(node, 2, now);
	mm_link_up(node, 3, now);
	for (size_t pos = 0; pos < size;) {
		const uint8_t *nl = memchr(data + pos, '\n', size - pos);
		size_t len = nl != NULL ? (size_t)(nl - (data + pos)) : size - pos;
		const char *line = (const char *)data + pos;
		struct mm_msg msg, again;
		const char *error;

		pos += len + 1;
		now += len % 7;
		if (mm_msg_parse(line, len, &msg, &error) == 0) {
			buf_reset(&w1);
			buf_reset(&w2);
			mm_msg_write(&msg, &w1);
			if (mm_msg_parse((const char *)w1.data, w1.len, &again, &error) != 0)
				abort();
			mm_msg_write(&again, &w2);
			if (w1.len != w2.len || memcmp(w1.data, w2.data, w1.len) != 0)
				abort();
			mm_receive(node, 2 + (uint32_t)(len & 1), &msg, now);
		}
		switch (len % 5) {
		case 0:
			mm_tick(node, now);
			break;
		case 1:
			(void)mm_request_master(node, "u:a", len, now);
			break;
		case 2:
			(void)mm_request_mastership(node, "u:a", now);
			break;
		case 3:
			(void)mm_note_write(node, "u:a", now);
			break;
		default:
			if (len % 11 == 0)
				mm_link_down(node, 3, now);
			else if (len % 13 == 0)
				mm_link_up(node, 3, now);
			break;
		}
		while (mm_next_output(node, &out))
			;
	}
	mm_node_destroy(&node);
	buf_free(&w1);
	buf_free(&w2);
	return 0;
}
