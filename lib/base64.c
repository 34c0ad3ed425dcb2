#include "lib/base64.h"

#include <limits.h>
#include <openssl/evp.h>
#include <string.h>

static const char alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

long base64_decode(const char *in, size_t len, unsigned char *out)
{
	if (len % 4 != 0 || len > INT_MAX)
		return -1;
	if (len == 0)
		return 0;
	size_t pad = in[len - 1] != '=' ? 0 : in[len - 2] != '=' ? 1 : 2;
	/* OpenSSL's decoder skips white space and takes '=' anywhere: check
	 * the form here, let it do the arithmetic. */
	for (size_t i = 0; i < len - pad; i++)
		if (in[i] == '\0' || strchr(alphabet, in[i]) == NULL)
			return -1;
	int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
	return n < 0 ? -1 : (long)n - (long)pad;
}
