// pretrade-loadgen: a gRPC load generator in C++, so that on a small machine the
// client is not what limits the figures (the Python client costs about as much
// CPU per call as the server it measures).
//
// Built from proto/pretrade/v1/risk.proto against the system's gRPC C++ library
// (`make loadgen`). One line of JSON on stdout per run:
//
//   pretrade-loadgen --target 127.0.0.1:50051 --mode unary --threads 4 --seconds 5
//
// Modes (each thread has its own channel, so its own connection, and keeps one
// call in flight: latencies are round trips, throughput is threads / latency):
//   unary  EvaluateOrder
//   batch  EvaluateOrders, --batch orders per message
//   echo   the bench servers' empty echo method (/pretrade.bench.Echo/Echo)
//   pair   echo and EvaluateOrder alternately on one connection: the same
//          server, the same moment, so their ratio is fair
//   session  one OrderSession stream per thread, --inflight orders sent ahead of
//          their decisions; a latency is an order's write to its decision
// Orders: --accounts accounts named <--account>-<n> (or just --account with 1;
// or --account-list A,B,C: exactly these, e.g. the accounts one cluster node owns),
// symbol --symbol, a buy of 1 at --price (the accounts' limits must allow them all:
// the bench gives them limits far above what a run reaches); order ids
// are <--prefix>-<thread>-<n>, unique per run.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pretrade/v1/risk.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kEchoMethod = "/pretrade.bench.Echo/Echo";

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string mode = "unary";
  std::string account = "ACC";
  std::string symbol = "AAPL";
  std::string prefix = "lg";
  int accounts = 1;
  std::vector<std::string> account_list;  // --account-list: these accounts, in turn
  int threads = 1;
  int batch = 1000;
  double seconds = 5.0;
  int64_t price = 683378;
  int64_t max_calls = 0;  // per thread; 0: until --seconds
  int inflight = 64;      // session: orders written ahead of their decisions
};

// What one thread saw: its round trips (ns) and the decisions' outcomes.
struct Tally {
  std::vector<int64_t> latencies;       // EvaluateOrder(s) round trips
  std::vector<int64_t> echo_latencies;  // echo round trips (echo, pair)
  int64_t orders = 0, approved = 0, rejected = 0, errors = 0, calls = 0;
  std::map<int, int64_t> codes;  // first reject code of each rejected order
  std::string last_error;
};

[[noreturn]] void Usage(const char* why) {
  std::fprintf(stderr,
               "pretrade-loadgen: %s\nusage: pretrade-loadgen --target HOST:PORT "
               "--mode unary|batch|echo|pair|session [--threads N] [--seconds S] [--batch N] "
               "[--account ID] [--accounts N] [--account-list A,B,...] [--symbol SYM] [--price P] [--prefix P] "
               "[--max-calls N] [--inflight N]\n",
               why);
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) Usage(("missing the value of " + flag).c_str());
    std::string value = argv[++i];
    try {
      if (flag == "--target") o.target = value;
      else if (flag == "--mode") o.mode = value;
      else if (flag == "--account") o.account = value;
      else if (flag == "--accounts") o.accounts = std::stoi(value);
      else if (flag == "--account-list") {
        o.account_list.clear();
        for (size_t start = 0; start <= value.size();) {
          const size_t comma = std::min(value.find(',', start), value.size());
          if (comma == start) Usage("--account-list holds an empty account id");
          o.account_list.push_back(value.substr(start, comma - start));
          start = comma + 1;
        }
      }
      else if (flag == "--symbol") o.symbol = value;
      else if (flag == "--prefix") o.prefix = value;
      else if (flag == "--threads") o.threads = std::stoi(value);
      else if (flag == "--batch") o.batch = std::stoi(value);
      else if (flag == "--seconds") o.seconds = std::stod(value);
      else if (flag == "--price") o.price = std::stoll(value);
      else if (flag == "--max-calls") o.max_calls = std::stoll(value);
      else if (flag == "--inflight") o.inflight = std::stoi(value);
      else Usage(("unknown flag " + flag).c_str());
    } catch (const std::exception&) {
      Usage(("not a number: " + flag + " " + value).c_str());
    }
  }
  if (o.mode != "unary" && o.mode != "batch" && o.mode != "echo" && o.mode != "pair" &&
      o.mode != "session")
    Usage("--mode must be unary, batch, echo, pair or session");
  if (o.threads < 1 || o.accounts < 1 || o.batch < 1 || o.seconds <= 0 || o.inflight < 1)
    Usage("--threads, --accounts, --batch, --inflight and --seconds must be positive");
  return o;
}

std::shared_ptr<grpc::Channel> NewChannel(const Options& o, int thread) {
  grpc::ChannelArguments args;
  args.SetInt("pretrade.loadgen.thread", thread);  // a distinct channel, its own connection
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args);
}

class OrderMaker {
 public:
  OrderMaker(const Options& o, int thread) : o_(o), thread_(thread) {}
  void Fill(pretrade::v1::Order* order) {
    const int64_t n = next_++;
    order->set_order_id(o_.prefix + "-" + std::to_string(thread_) + "-" + std::to_string(n));
    const int64_t turn = thread_ + n;
    if (!o_.account_list.empty())
      order->set_account_id(o_.account_list[turn % o_.account_list.size()]);
    else
      order->set_account_id(o_.accounts == 1
                                ? o_.account
                                : o_.account + "-" + std::to_string(turn % o_.accounts));
    order->set_symbol(o_.symbol);
    order->set_side(pretrade::v1::SIDE_BUY);
    order->set_quantity(1);
    order->set_price(o_.price);
    order->set_order_type(pretrade::v1::ORDER_TYPE_LIMIT);
    order->set_venue("XNAS");
  }

 private:
  const Options& o_;
  const int thread_;
  int64_t next_ = 0;
};

void Count(const pretrade::v1::Decision& decision, Tally* tally) {
  ++tally->orders;
  if (decision.approved()) {
    ++tally->approved;
  } else {
    ++tally->rejected;
    if (decision.rejections_size() > 0) ++tally->codes[decision.rejections(0).code()];
  }
}

// The generic stub's unary call, waited for: the echo method has no generated stub.
class Echo {
 public:
  explicit Echo(std::shared_ptr<grpc::Channel> channel) : stub_(std::move(channel)) {}
  grpc::Status Call(const grpc::ByteBuffer& request, grpc::ByteBuffer* reply) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub_.UnaryCall(&context, kEchoMethod, grpc::StubOptions(), &request, reply,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = std::move(s);
                      done = true;
                      cv.notify_one();
                    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    return status;
  }

 private:
  grpc::GenericStub stub_;
};

int64_t Since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

// One OrderSession: this thread writes, a reader thread takes the decisions (in
// order, so each one is the oldest order still waiting).
void RunSession(const Options& o, int thread, Clock::time_point deadline, Tally* tally) {
  auto stub = pretrade::v1::PreTradeRisk::NewStub(NewChannel(o, thread));
  grpc::ClientContext context;
  auto stream = stub->OrderSession(&context);
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Clock::time_point> waiting;
  bool reading = true;
  std::thread reader([&] {
    pretrade::v1::Decision decision;
    while (stream->Read(&decision)) {
      Clock::time_point sent;
      {
        std::lock_guard<std::mutex> lock(mu);
        sent = waiting.front();
        waiting.pop_front();
      }
      cv.notify_one();
      tally->latencies.push_back(Since(sent));
      Count(decision, tally);
    }
    std::lock_guard<std::mutex> lock(mu);
    reading = false;
    cv.notify_one();
  });
  OrderMaker maker(o, thread);
  pretrade::v1::Order order;
  while (Clock::now() < deadline && (o.max_calls == 0 || tally->calls < o.max_calls)) {
    maker.Fill(&order);
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return !reading || static_cast<int>(waiting.size()) < o.inflight; });
      if (!reading) break;
      waiting.push_back(Clock::now());
    }
    ++tally->calls;
    if (!stream->Write(order)) break;
  }
  stream->WritesDone();
  reader.join();
  grpc::Status status = stream->Finish();
  if (!status.ok()) {
    ++tally->errors;
    tally->last_error = std::to_string(status.error_code()) + ": " + status.error_message();
  }
}

void Run(const Options& o, int thread, Clock::time_point deadline, Tally* tally) {
  if (o.mode == "session") return RunSession(o, thread, deadline, tally);
  auto channel = NewChannel(o, thread);
  auto stub = pretrade::v1::PreTradeRisk::NewStub(channel);
  Echo echo(channel);
  OrderMaker maker(o, thread);
  pretrade::v1::Order order;
  pretrade::v1::OrderBatch batch;
  grpc::ByteBuffer echo_request, echo_reply;
  if (o.mode == "echo" || o.mode == "pair") {
    maker.Fill(&order);  // an order's bytes: the same payload as EvaluateOrder's
    std::string bytes = order.SerializeAsString();
    grpc::Slice slice(bytes);
    echo_request = grpc::ByteBuffer(&slice, 1);
  }
  auto fail = [&](const grpc::Status& status) {
    ++tally->errors;
    tally->last_error = std::to_string(status.error_code()) + ": " + status.error_message();
  };
  while (Clock::now() < deadline && (o.max_calls == 0 || tally->calls < o.max_calls)) {
    ++tally->calls;
    if (o.mode == "echo" || o.mode == "pair") {
      auto start = Clock::now();
      grpc::Status status = echo.Call(echo_request, &echo_reply);
      tally->echo_latencies.push_back(Since(start));
      if (!status.ok()) fail(status);
      if (o.mode == "echo") continue;
    }
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (o.mode == "batch") {
      batch.clear_orders();
      for (int i = 0; i < o.batch; ++i) maker.Fill(batch.add_orders());
      pretrade::v1::DecisionBatch reply;
      auto start = Clock::now();
      grpc::Status status = stub->EvaluateOrders(&context, batch, &reply);
      tally->latencies.push_back(Since(start));
      if (!status.ok()) {
        fail(status);
        continue;
      }
      for (const auto& decision : reply.decisions()) Count(decision, tally);
    } else {
      maker.Fill(&order);
      pretrade::v1::Decision reply;
      auto start = Clock::now();
      grpc::Status status = stub->EvaluateOrder(&context, order, &reply);
      tally->latencies.push_back(Since(start));
      if (!status.ok()) {
        fail(status);
        continue;
      }
      Count(reply, tally);
    }
  }
}

int64_t Percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size()));
  return sorted[std::min(rank, sorted.size() - 1)];
}

std::string Summary(std::vector<int64_t> values) {
  std::sort(values.begin(), values.end());
  char text[256];
  std::snprintf(text, sizeof text,
                "{\"count\": %zu, \"p50_ns\": %lld, \"p99_ns\": %lld, \"p999_ns\": %lld, "
                "\"max_ns\": %lld}",
                values.size(), static_cast<long long>(Percentile(values, 50)),
                static_cast<long long>(Percentile(values, 99)),
                static_cast<long long>(Percentile(values, 99.9)),
                static_cast<long long>(values.empty() ? 0 : values.back()));
  return text;
}

std::string Escaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  std::vector<Tally> tallies(o.threads);
  std::vector<std::thread> threads;
  const auto started = Clock::now();
  const auto deadline = started + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(o.seconds));
  for (int t = 0; t < o.threads; ++t)
    threads.emplace_back(Run, std::cref(o), t, deadline, &tallies[t]);
  for (auto& thread : threads) thread.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();

  Tally all;
  for (auto& t : tallies) {
    all.latencies.insert(all.latencies.end(), t.latencies.begin(), t.latencies.end());
    all.echo_latencies.insert(all.echo_latencies.end(), t.echo_latencies.begin(),
                              t.echo_latencies.end());
    all.orders += t.orders, all.approved += t.approved, all.rejected += t.rejected;
    all.errors += t.errors, all.calls += t.calls;
    for (const auto& [code, n] : t.codes) all.codes[code] += n;
    if (!t.last_error.empty()) all.last_error = t.last_error;
  }
  std::string codes = "{";
  for (const auto& [code, n] : all.codes) {
    if (codes.size() > 1) codes += ", ";
    codes += "\"" + pretrade::v1::RejectCode_Name(code) + "\": " + std::to_string(n);
  }
  codes += "}";
  std::printf(
      "{\"mode\": \"%s\", \"threads\": %d, \"batch\": %d, \"seconds\": %.3f, \"calls\": %lld, "
      "\"orders\": %lld, \"approved\": %lld, \"rejected\": %lld, \"errors\": %lld, "
      "\"first_reject_codes\": %s, \"last_error\": \"%s\", \"orders_per_second\": %.1f, "
      "\"inflight\": %d, \"latency\": %s, \"echo_latency\": %s}\n",
      o.mode.c_str(), o.threads, o.mode == "batch" ? o.batch : 1, elapsed,
      static_cast<long long>(all.calls), static_cast<long long>(all.orders),
      static_cast<long long>(all.approved), static_cast<long long>(all.rejected),
      static_cast<long long>(all.errors), codes.c_str(), Escaped(all.last_error).c_str(),
      static_cast<double>(all.orders) / elapsed, o.mode == "session" ? o.inflight : 1,
      Summary(all.latencies).c_str(),
      Summary(all.echo_latencies).c_str());
  return all.errors > 0 && all.orders == 0 && all.echo_latencies.empty() ? 1 : 0;
}
