/*
 * The blob container of the FAISS policies (faiss-ivf, faiss-hnsw). FAISS
 * types stay inside index/: only this folder includes this header.
 *
 * Blob body (format chosen by the policy): n u64, d u32, param u32 (the
 * policy's: nlist, M), payload length u64, payload XXH3 u64, then FAISS's
 * own serialisation (faiss_write_index). FAISS's reader is not hardened
 * against hostile input, so a payload reaches it only when its checksum
 * matches; what it returns is then checked (d, ntotal, metric) before use.
 */
#ifndef MNEMO_INDEX_IX_FAISS_H
#define MNEMO_INDEX_IX_FAISS_H

#include <faiss/c_api/Index_c.h>
#include <stddef.h>
#include <stdint.h>

/** Serialise @p index into a blob (malloc'ed, caller frees). @return 0, -ENOMEM, -EIO */
int ix_faiss_save(const FaissIndex *index, unsigned policy, uint16_t version, uint64_t n, unsigned d,
		  uint32_t param, uint8_t **buf, size_t *len);

/**
 * Read a blob: header, checksum, FAISS payload; the index must have
 * dimension @p *d, @p *n vectors and the inner-product metric.
 * @param out  the index (caller frees with faiss_Index_free)
 * @return 0, -EBADMSG, -ENOMEM
 */
int ix_faiss_read(const uint8_t *buf, size_t len, unsigned policy, uint16_t version, uint64_t *n, unsigned *d,
		  uint32_t *param, FaissIndex **out);

#endif
