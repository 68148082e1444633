# A fake Bedrock runtime on 127.0.0.1:PORT: invoke, invoke-with-response-stream (AWS
# event-stream frames), count-tokens. Records request paths and bodies to stdout.
import base64, json, struct, sys, zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

EVENTS = [
    {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":None,"stop_sequence":None,"usage":{"input_tokens":9,"output_tokens":1}}},
    {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}},
    {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello from fake Bedrock"}},
    {"type":"content_block_stop","index":0},
    {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":None},"usage":{"output_tokens":5}},
    {"type":"message_stop"},
]

def header(name, value):
    n = name.encode(); v = value.encode()
    return bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v

def frame(event):
    payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()}).encode()
    headers = header(":event-type", "chunk") + header(":content-type", "application/json") + header(":message-type", "event")
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xffffffff)
    msg = prelude + headers + payload
    return msg + struct.pack(">I", zlib.crc32(msg) & 0xffffffff)

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(self.path, body.decode()[:200], flush=True)
        if self.path.endswith("/invoke-with-response-stream"):
            data = b"".join(frame(e) for e in EVENTS)
            self.send_response(200); self.send_header("content-type", "application/vnd.amazon.eventstream")
            self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
        elif self.path.endswith("/count-tokens"):
            data = b'{"inputTokens": 12}'
            self.send_response(200); self.send_header("content-type","application/json"); self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
        else:
            data = json.dumps({"id":"msg_2","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi (non-stream)"}],"stop_reason":"end_turn","stop_sequence":None,"usage":{"input_tokens":3,"output_tokens":2}}).encode()
            self.send_response(200); self.send_header("content-type","application/json"); self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def log_message(self, *a): pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
