/* Date: header parsing (RFC 5322 3.3 and 4.3, plus the real-world forms
 * listed in imap-mime.h).  The string is split into numbers, h:m[:s] times,
 * words (months, weekdays, zone names) and signed zone offsets; the numbers
 * are then assigned to day and year (or year, month, day for ISO 8601). */
#include "imap/imap-mime-private.h"

#include <ctype.h>
#include <string.h>

#define DATE_MAX_NUMS 8

struct date_num {
	int value;
	unsigned digits;
};

static const char *const month_names[12] = {
	"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
};
static const char *const month_full[12] = {
	"january", "february", "march", "april", "may", "june", "july", "august",
	"september", "october", "november", "december",
};
static const char *const day_full[7] = {
	"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
};

struct zone_name {
	const char *name;
	int minutes;
};

static const struct zone_name zone_names[] = {
	{ "ut", 0 }, { "utc", 0 }, { "gmt", 0 }, { "z", 0 },
	{ "est", -300 }, { "edt", -240 }, { "cst", -360 }, { "cdt", -300 },
	{ "mst", -420 }, { "mdt", -360 }, { "pst", -480 }, { "pdt", -420 },
	{ "bst", 60 }, { "cet", 60 }, { "met", 60 }, { "cest", 120 }, { "mest", 120 },
	{ "eet", 120 }, { "eest", 180 }, { "jst", 540 },
};

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_since_epoch(int y, int m, int d)
{
	/* count years from March so that the leap day ends the year */
	if (m <= 2)
		y--;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t mp = (m + 9) % 12;
	int64_t doy = (153 * mp + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
	static const int days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return days[m - 1];
}

static bool word_is_prefix_of(const char *w, size_t n, const char *full)
{
	return n <= strlen(full) && strncmp(w, full, n) == 0;
}

/* Reads up to max digits; returns how many were read (0 if none). */
static unsigned read_num(const char *s, size_t len, size_t *i, unsigned max, int *v_r)
{
	unsigned n = 0;
	int v = 0;
	while (*i < len && isdigit((unsigned char)s[*i])) {
		if (n < max)
			v = v * 10 + (s[*i] - '0');
		n++;
		(*i)++;
	}
	*v_r = v;
	return n;
}

/* Interprets a word; returns false for words that make the date invalid. */
static void date_word(const char *w, size_t n, int *mon, int *tz, bool *have_tz, int *ampm)
{
	if (n >= 3) {
		for (int k = 0; k < 12; k++) {
			if (strncmp(w, month_names[k], 3) == 0 && word_is_prefix_of(w, n, month_full[k]) &&
			    (n == 3 || n == strlen(month_full[k]) || (k == 8 && n == 4))) {
				*mon = k + 1;
				return;
			}
		}
		for (int k = 0; k < 7; k++) {
			if (word_is_prefix_of(w, n, day_full[k]))
				return;
		}
	}
	if (n == 2 && (strncmp(w, "am", 2) == 0 || strncmp(w, "pm", 2) == 0)) {
		*ampm = w[0] == 'a' ? 1 : 2;
		return;
	}
	for (size_t k = 0; k < sizeof(zone_names) / sizeof(zone_names[0]); k++) {
		if (strlen(zone_names[k].name) == n && strncmp(w, zone_names[k].name, n) == 0) {
			if (!*have_tz) {
				*tz = zone_names[k].minutes;
				*have_tz = true;
			}
			return;
		}
	}
	/* RFC 5322 4.3: military single-letter zones are unreliable, so -0000;
	 * 't' separates ISO 8601 date and time */
	if (n == 1 && w[0] != 't' && !*have_tz) {
		*tz = 0;
		*have_tz = true;
	}
}

int imap_mime_parse_date(const char *s, size_t len, int64_t *t_r, int32_t *tz_minutes_r)
{
	struct date_num nums[DATE_MAX_NUMS];
	size_t nnums = 0, i = 0;
	int day = -1, mon = -1, year = -1, hh = -1, mm = 0, ss = 0, tz = 0, ampm = 0;
	unsigned year_digits = 0;
	bool have_tz = false;

	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		if (c == '(') {
			unsigned depth = 0;
			for (; i < len; i++) {
				if (s[i] == '(')
					depth++;
				else if (s[i] == ')' && --depth == 0) {
					i++;
					break;
				}
			}
		} else if (isdigit(c)) {
			int v;
			unsigned nd = read_num(s, len, &i, 9, &v);
			if (i < len && s[i] == ':' && hh < 0 && nd <= 2) {
				hh = v;
				i++;
				if (read_num(s, len, &i, 2, &mm) == 0)
					return 0;
				if (i < len && s[i] == ':') {
					i++;
					if (read_num(s, len, &i, 2, &ss) == 0)
						return 0;
				}
				/* fractional seconds in ISO 8601 */
				if (i < len && s[i] == '.' && i + 1 < len && isdigit((unsigned char)s[i + 1])) {
					int frac;
					i++;
					read_num(s, len, &i, 9, &frac);
				}
			} else {
				if (nd > 4 || nnums >= DATE_MAX_NUMS)
					return 0;
				nums[nnums].value = v;
				nums[nnums].digits = nd;
				nnums++;
			}
		} else if (isalpha(c)) {
			char w[16];
			size_t n = 0;
			while (i < len && isalpha((unsigned char)s[i])) {
				if (n < sizeof(w))
					w[n] = (char)tolower((unsigned char)s[i]);
				n++;
				i++;
			}
			if (n <= sizeof(w))
				date_word(w, n, &mon, &tz, &have_tz, &ampm);
		} else if ((c == '+' || c == '-') && hh >= 0 && i + 1 < len &&
			   isdigit((unsigned char)s[i + 1])) {
			int sign = c == '-' ? -1 : 1, h, m = 0;
			i++;
			unsigned nd = read_num(s, len, &i, 4, &h);
			if (nd == 4) {
				m = h % 100;
				h /= 100;
			} else if (nd <= 2 && i < len && s[i] == ':') {
				i++;
				if (read_num(s, len, &i, 2, &m) != 2)
					return 0;
			} else if (nd > 2) {
				return 0;
			}
			if (h > 23 || m > 59)
				return 0;
			tz = sign * (h * 60 + m);
			have_tz = true;
		} else {
			i++;
		}
	}

	if (mon < 0 && nnums >= 3 && nums[0].digits == 4) {
		/* ISO 8601: year-month-day */
		year = nums[0].value;
		year_digits = 4;
		mon = nums[1].value;
		day = nums[2].value;
	} else {
		for (size_t k = 0; k < nnums; k++) {
			if (nums[k].digits >= 3 && year < 0) {
				year = nums[k].value;
				year_digits = nums[k].digits;
			} else if (day < 0 && nums[k].digits <= 2) {
				day = nums[k].value;
			} else if (year < 0) {
				year = nums[k].value;
				year_digits = nums[k].digits;
			} else {
				return 0;
			}
		}
	}
	if (day < 0 || mon < 0 || year < 0)
		return 0;
	if (year_digits <= 2)
		year += year < 50 ? 2000 : 1900;
	else if (year_digits == 3)
		year += 1900;
	if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon))
		return 0;
	if (hh < 0)
		hh = 0; /* no time at all: midnight */
	if (ampm == 2 && hh < 12)
		hh += 12;
	else if (ampm == 1 && hh == 12)
		hh = 0;
	if (hh > 23 || mm > 59 || ss > 60)
		return 0;
	if (ss == 60)
		ss = 59; /* leap second */
	*t_r = days_since_epoch(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss -
	       (int64_t)tz * 60;
	*tz_minutes_r = tz;
	return 1;
}

int imap_mime_date(const struct imap_mime *m, int64_t *t_r, int32_t *tz_minutes_r)
{
	struct mime_field f;
	if (!mime_hdr_find(m, &m->parts.items[0], "date", &f))
		return 0;
	struct buf v = BUF_INIT;
	mime_unfold(f.value, f.value_len, &v);
	int ret = imap_mime_parse_date((const char *)v.data, v.len, t_r, tz_minutes_r);
	buf_free(&v);
	return ret;
}
