/* SPDX-License-Identifier: BSD-3-Clause */
/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven.  Used only for header
 * checksums, so speed does not matter; correctness is pinned by the check value in the tests. */
#include "overlay/format.h"

#include <pthread.h>

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void
make_table(void)
{
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ UINT32_C(0x82F63B78) : c >> 1;
    table[i] = c;
  }
}

uint32_t
ovl_crc32c(const void *buf, size_t len)
{
  const uint8_t *p = buf;
  uint32_t crc = UINT32_C(0xFFFFFFFF);

  pthread_once(&table_once, make_table);
  while (len--)
    crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc ^ UINT32_C(0xFFFFFFFF);
}
