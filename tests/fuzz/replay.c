/*
 * Runs a fuzz target without libFuzzer (gcc builds): on the files named on
 * the command line, or else on inputs made by mutating the target's valid
 * seeds (fuzz_seed(): bit flips, truncations, overwritten length fields), a
 * fixed number of times from a printed seed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap);

int main(int argc, char **argv)
{
	static uint8_t buf[1 << 16];
	if (argc > 1) {
		for (int i = 1; i < argc; i++) {
			FILE *f = fopen(argv[i], "rb");
			if (!f)
				continue;
			size_t n = fread(buf, 1, sizeof(buf), f);
			fclose(f);
			LLVMFuzzerTestOneInput(buf, n);
		}
		return 0;
	}
	uint64_t s = check_seed();
	const int runs = 200000;
	for (int i = 0; i < runs; i++) {
		size_t n = fuzz_seed((unsigned)(check_rand(&s) % 64), buf, sizeof(buf));
		if (!n)
			continue;
		int flips = (int)(check_rand(&s) % 4);
		for (int k = 0; k < flips; k++)
			buf[check_rand(&s) % n] ^= (uint8_t)(1u << (check_rand(&s) % 8));
		if (check_rand(&s) % 3 == 0)
			n = 1 + check_rand(&s) % n;
		if (check_rand(&s) % 5 == 0 && n > 5) {
			uint32_t big = (uint32_t)check_rand(&s);
			memcpy(buf + check_rand(&s) % (n - 4), &big, 4);
		}
		LLVMFuzzerTestOneInput(buf, n);
	}
	printf("%d inputs, no crash\n", runs);
	return 0;
}
