-- wrk script for the race: POST the prepared request bodies in turn (the same 10 photos
-- for every server), bounded by time (-d) and by count (WRK_MAX requests a thread).
-- WRK_BODIES: a file of lines "<body file>\t<Inference-Header-Content-Length or empty>";
-- WRK_PATH: the URL path every request goes to.
local bodies, headers = {}, {}
local index, answered, limit = 0, 0, 0

function init(args)
  limit = tonumber(os.getenv("WRK_MAX") or "0")
  for line in io.lines(os.getenv("WRK_BODIES")) do
    local path, header = line:match("^([^\t]+)\t?(%d*)$")
    local f = io.open(path, "rb")
    bodies[#bodies + 1] = f:read("*all")
    f:close()
    local h = {["Content-Type"] = "application/octet-stream"}
    if header ~= "" then h["Inference-Header-Content-Length"] = header end
    headers[#headers + 1] = h
  end
end

function request()
  index = index % #bodies + 1
  return wrk.format("POST", os.getenv("WRK_PATH"), headers[index], bodies[index])
end

function response(status, hdrs, body)
  answered = answered + 1
  if limit > 0 and answered >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON {\"requests\": %d, \"errors\": %d, \"seconds\": %.3f, \"p50_us\": %d, \"p99_us\": %d}\n",
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
