import anthropic, sys
client = anthropic.Anthropic(base_url=sys.argv[1], api_key="anything")
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=[{"role":"user","content":"hi"}]) as stream:
    text = "".join(stream.text_stream)
print("stream:", text)
m = client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role":"user","content":"hi"}])
print("create:", m.content[0].text)
print("count:", client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role":"user","content":"hi"}]).input_tokens)
print("models:", [m.id for m in client.models.list()])
