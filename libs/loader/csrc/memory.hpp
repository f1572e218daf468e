// Host memory for loads: anonymous buffers, file mappings and the reusable pool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace sllm {

// A failed system call; the bindings raise it as Python's OSError.
struct OsError {
  int err;
  std::string what;
};

class PoolState;

// One contiguous range of host memory. Python exposes it through the buffer
// protocol, so torch.frombuffer() tensors keep it alive; the destructor gives the
// memory back (munmap, or return the range to its pool).
class Buffer {
 public:
  enum class Kind { kAnonymous = 0, kFileMap = 1, kPoolRegion = 2 };

  // Fresh private anonymous memory (page aligned, not yet touched).
  static std::shared_ptr<Buffer> anonymous(size_t size, bool hugepage);
  // Files mapped back to back (MAP_PRIVATE: writes are copy-on-write and never
  // reach the files) into one reserved range; sizes must be page multiples.
  static std::shared_ptr<Buffer> map_files(const std::vector<std::string>& paths,
                                           const std::vector<uint64_t>& sizes);

  Buffer(uint8_t* data, size_t size, Kind kind, std::shared_ptr<PoolState> pool, size_t offset);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  Kind kind() const { return kind_; }
  size_t pool_offset() const { return offset_; }

 private:
  uint8_t* data_;
  size_t size_;
  Kind kind_;
  std::shared_ptr<PoolState> pool_;
  size_t offset_;
};

// A pre-touched anonymous region handing out page-aligned sub-ranges; first fit
// with coalescing. Regions hold a reference, so the mapping outlives close()
// until the last region is gone.
class PoolState : public std::enable_shared_from_this<PoolState> {
 public:
  PoolState(size_t capacity, bool hugepage, int touch_threads);
  ~PoolState();
  PoolState(const PoolState&) = delete;
  PoolState& operator=(const PoolState&) = delete;

  std::shared_ptr<Buffer> alloc(size_t size);  // nullptr when no free range fits
  void release(size_t offset, size_t size);
  void close();

  uint8_t* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  size_t used() const;
  size_t largest_free() const;
  size_t regions() const;
  bool closed() const;

 private:
  uint8_t* base_;
  size_t capacity_;
  mutable std::mutex mu_;
  std::map<size_t, size_t> free_;  // offset -> size
  size_t used_ = 0;
  size_t regions_ = 0;
  bool closed_ = false;
};

// Fault pages in with several threads (MADV_POPULATE_*; touching as fallback).
void populate(uint8_t* data, size_t size, bool write, int threads);

// (bytes of the file resident in the page cache, file size), via mincore().
std::pair<uint64_t, uint64_t> residency(const std::string& path);

// Whether at least `fraction` of the file's pages are in the page cache; stops scanning
// as soon as the answer is known to be no.
bool is_resident(const std::string& path, double fraction);

// statfs f_type of the filesystem holding path.
int64_t fs_magic(const std::string& path);

// Atomically swap two paths (renameat2 RENAME_EXCHANGE).
void exchange_paths(const std::string& a, const std::string& b);

}  // namespace sllm
