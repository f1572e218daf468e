// Host memory: buffers, file mappings, the pool, residency and filesystem probes.
#include "memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

namespace sllm {
namespace {

constexpr size_t kPage = 4096;

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

[[noreturn]] void fail(const std::string& what) { throw OsError{errno, what}; }

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

void populate_range(uint8_t* data, size_t size, bool write) {
  if (size == 0) return;
  if (::madvise(data, size, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0) return;
  // Kernels before 5.14 lack MADV_POPULATE_*: touch one byte per page instead.
  volatile uint8_t* p = data;
  for (size_t off = 0; off < size; off += kPage) {
    if (write) {
      p[off] = 0;
    } else {
      (void)p[off];
    }
  }
}

}  // namespace

void populate(uint8_t* data, size_t size, bool write, int threads) {
  const size_t n = static_cast<size_t>(std::max(1, threads));
  const size_t per = round_up((size + n - 1) / n, 2 << 20);
  std::vector<std::thread> pool;
  for (size_t off = 0; off < size; off += per) {
    const size_t len = std::min(per, size - off);
    pool.emplace_back(populate_range, data + off, len, write);
  }
  for (auto& t : pool) t.join();
}

Buffer::Buffer(uint8_t* data, size_t size, Kind kind, std::shared_ptr<PoolState> pool,
               size_t offset)
    : data_(data), size_(size), kind_(kind), pool_(std::move(pool)), offset_(offset) {}

Buffer::~Buffer() {
  if (kind_ == Kind::kPoolRegion) {
    pool_->release(offset_, size_);
  } else if (data_ != nullptr) {
    ::munmap(data_, round_up(size_, kPage));
  }
}

std::shared_ptr<Buffer> Buffer::anonymous(size_t size, bool hugepage) {
  const size_t len = round_up(std::max<size_t>(size, 1), kPage);
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("mmap anonymous buffer");
  // Huge pages make first touch (page zeroing + faults) several times cheaper.
  if (hugepage) ::madvise(p, len, MADV_HUGEPAGE);
  return std::make_shared<Buffer>(static_cast<uint8_t*>(p), size, Kind::kAnonymous, nullptr, 0);
}

std::shared_ptr<Buffer> Buffer::map_files(const std::vector<std::string>& paths,
                                          const std::vector<uint64_t>& sizes) {
  size_t total = 0;
  for (uint64_t s : sizes) total += round_up(s, kPage);
  const size_t len = std::max<size_t>(total, kPage);
  // Reserve one range first so that all partitions are consecutive in memory.
  void* base = ::mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) fail("mmap reserve");
  auto* b = static_cast<uint8_t*>(base);
  size_t off = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    const size_t sz = sizes[i];
    if (sz == 0) continue;
    Fd fd(::open(paths[i].c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      const int e = errno;
      ::munmap(base, len);
      throw OsError{e, paths[i]};
    }
    void* p = ::mmap(b + off, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd.get(), 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::munmap(base, len);
      throw OsError{e, paths[i]};
    }
    off += round_up(sz, kPage);
  }
  return std::make_shared<Buffer>(b, len, Kind::kFileMap, nullptr, 0);
}

PoolState::PoolState(size_t capacity, bool hugepage, int touch_threads)
    : base_(nullptr), capacity_(round_up(std::max<size_t>(capacity, kPage), kPage)) {
  void* p = ::mmap(nullptr, capacity_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail("mmap pool");
  base_ = static_cast<uint8_t*>(p);
  if (hugepage) ::madvise(p, capacity_, MADV_HUGEPAGE);
  // Touch everything now: first touch of fresh memory is the slow part of a load.
  populate(base_, capacity_, true, touch_threads);
  free_[0] = capacity_;
}

PoolState::~PoolState() {
  if (base_ != nullptr) ::munmap(base_, capacity_);
}

std::shared_ptr<Buffer> PoolState::alloc(size_t size) {
  const size_t want = round_up(std::max<size_t>(size, 1), kPage);
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return nullptr;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < want) continue;
    const size_t off = it->first;
    const size_t rest = it->second - want;
    free_.erase(it);
    if (rest > 0) free_[off + want] = rest;
    used_ += want;
    ++regions_;
    return std::make_shared<Buffer>(base_ + off, want, Buffer::Kind::kPoolRegion,
                                    shared_from_this(), off);
  }
  return nullptr;
}

void PoolState::release(size_t offset, size_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  used_ -= size;
  --regions_;
  auto next = free_.lower_bound(offset);
  size_t start = offset;
  size_t len = size;
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      start = prev->first;
      len += prev->second;
      free_.erase(prev);
    }
  }
  if (next != free_.end() && offset + size == next->first) {
    len += next->second;
    free_.erase(next);
  }
  free_[start] = len;
}

void PoolState::close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
}

size_t PoolState::used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

size_t PoolState::largest_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t best = 0;
  for (const auto& kv : free_) best = std::max(best, kv.second);
  return closed_ ? 0 : best;
}

size_t PoolState::regions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return regions_;
}

bool PoolState::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

std::pair<uint64_t, uint64_t> residency(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size == 0) return {0, 0};
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) fail(path);
  const size_t pages = (size + kPage - 1) / kPage;
  std::vector<unsigned char> vec(pages);
  const int rc = ::mincore(p, size, vec.data());
  const int err = errno;
  ::munmap(p, size);
  if (rc != 0) throw OsError{err, path};
  uint64_t resident = 0;
  for (size_t i = 0; i < pages; ++i) {
    if (vec[i] & 1) resident += std::min<uint64_t>(kPage, size - i * kPage);
  }
  return {resident, size};
}

bool is_resident(const std::string& path, double fraction) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size == 0) return true;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) fail(path);
  const uint64_t pages = (size + kPage - 1) / kPage;
  const auto allowed = static_cast<uint64_t>(static_cast<double>(pages) * (1.0 - fraction));
  // Scan in windows and stop at the first sign of a cold file, the common case on disk.
  constexpr uint64_t kWindow = 16384;  // pages (64 MiB)
  std::vector<unsigned char> vec(std::min(pages, kWindow));
  uint64_t missing = 0;
  bool ok = true;
  for (uint64_t first = 0; first < pages && ok; first += kWindow) {
    const uint64_t n = std::min(kWindow, pages - first);
    const uint64_t len = std::min<uint64_t>(n * kPage, size - first * kPage);
    if (::mincore(static_cast<uint8_t*>(p) + first * kPage, len, vec.data()) != 0) {
      ok = false;
      break;
    }
    for (uint64_t i = 0; i < n; ++i) missing += (vec[i] & 1) ? 0 : 1;
    if (missing > allowed) break;
  }
  const int err = errno;
  ::munmap(p, size);
  if (!ok) throw OsError{err, path};
  return missing <= allowed;
}

int64_t fs_magic(const std::string& path) {
  struct statfs sf {};
  if (::statfs(path.c_str(), &sf) != 0) fail(path);
  return static_cast<int64_t>(sf.f_type);
}

void exchange_paths(const std::string& a, const std::string& b) {
  if (::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) != 0) {
    fail(a + " <-> " + b);
  }
}

}  // namespace sllm
