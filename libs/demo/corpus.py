"""Fixed offline text the demo tokenizer is trained on; changing it changes every demo model."""

from __future__ import annotations

# Varied on purpose (prose, dialogue, code, JSON, numbers, a little non-English text) so the
# learned merges cover the kinds of strings tests and examples feed the model.
_PROSE = """\
The lighthouse keeper climbed the spiral stairs every evening at dusk. There were one hundred
and twelve steps, and he counted each of them, not because he had forgotten the number but
because counting kept his mind quiet. At the top he trimmed the wick, polished the great lens,
and watched the first ships of the night slide past the rocks like slow, careful thoughts.

In the spring the town held a market in the square. Farmers brought early strawberries, fresh
bread, goat cheese wrapped in leaves, and honey in small glass jars. Children ran between the
stalls, and the old clock on the town hall struck noon while the baker argued with the mayor
about the price of flour. Nobody remembered who won the argument, but everyone remembered the
bread.

A river does not hurry, yet it always arrives. It carves valleys out of stone by being patient,
and it carries the mountains, grain by grain, down to the sea. Scientists measure its flow in
cubic metres per second; poets measure it in seasons and in the memories of the people who
lived along its banks.

She opened the letter slowly. The paper was thin and smelled faintly of cedar. "Dear Anna,"
it began, "I am writing to you from a small station in the north, where the trains stop only
twice a week and the snow reaches the windows. The work is hard, but the sky at night is full
of stars, more than I have ever seen. Please tell mother that I am well."

Learning a new language is like walking into a house at night. At first you bump into the
furniture and cannot find the light switch. Later you know where every chair stands, and you
can walk through the rooms with your eyes closed. Finally, one day, you realise that you have
started to dream in the language, and the house has become your home.

The committee met on Thursday to discuss the budget for the next year. After a long debate,
they agreed to repair the bridge, plant three hundred trees along the main road, and open the
library on Sundays. The proposal to build a new parking garage was postponed until autumn.

Good morning! How are you today? I am fine, thank you. What would you like to drink: tea,
coffee, or water? A cup of tea, please, with a little milk and no sugar. Of course. Would you
like something to eat as well? Perhaps a slice of the apple cake, if there is any left.

Computers do exactly what they are told, which is both their greatest strength and their most
frustrating weakness. A program is a precise description of a process, written for a reader
that never guesses and never forgets. Good programmers write for two readers at once: the
machine that runs the code and the person who will read it next year.

The storm arrived just after midnight. Wind rattled the shutters, rain drummed on the roof,
and somewhere in the distance a dog barked at the thunder. By morning the garden was full of
broken branches and the street had turned into a shallow, muddy river.
"""

_DIALOGUE = """\
User: Can you explain what a cache is?
Assistant: A cache is a small, fast store that keeps copies of data that is expensive to fetch
or compute. When the same data is needed again, it can be served from the cache instead of
repeating the slow work. Caches appear everywhere: in processors, in web browsers, in databases
and in content delivery networks.
User: What happens when the cache is full?
Assistant: Then something must be evicted. A common policy is least recently used, or LRU,
which removes the entry that has gone the longest without being read. Other policies include
least frequently used, first in first out, and random eviction.
User: Thanks! Write me a short poem about the sea.
Assistant: The sea keeps every secret told,
in silver waves and currents cold;
it hums the songs the sailors knew,
and paints the morning sky in blue.
User: What is the capital of France?
Assistant: The capital of France is Paris.
User: And how many legs does a spider have?
Assistant: A spider has eight legs.
"""

_CODE = '''\
import json
import os
from dataclasses import dataclass, field


@dataclass
class Request:
    """One inference request waiting in the queue."""

    request_id: str
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"id": self.request_id, "prompt": self.prompt})


def load_config(path: str) -> dict[str, object]:
    """Read a JSON configuration file and return it as a dictionary."""
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not isinstance(config, dict):
        raise ValueError(f"expected an object in {path}, got {type(config).__name__}")
    return config


def chunked(items: list[int], size: int) -> list[list[int]]:
    if size <= 0:
        raise ValueError("size must be positive")
    return [items[i : i + size] for i in range(0, len(items), size)]


class LRUCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        value = self.entries.pop(key, None)
        if value is not None:
            self.entries[key] = value
        return value

    def put(self, key: str, value: bytes) -> None:
        self.entries.pop(key, None)
        self.entries[key] = value
        while len(self.entries) > self.capacity:
            oldest = next(iter(self.entries))
            del self.entries[oldest]


async def fetch_all(client, urls):
    results = []
    for url in urls:
        response = await client.get(url, timeout=10.0)
        response.raise_for_status()
        results.append(response.json())
    return results


if __name__ == "__main__":
    cache = LRUCache(capacity=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    print(cache.get("a"), os.getcwd())
'''

_SHELL_AND_DATA = """\
$ python -m pip install --upgrade pip
$ export MODEL_DIR=/tmp/models/demo && mkdir -p "$MODEL_DIR"
$ curl -s http://127.0.0.1:8080/v1/models | jq '.data[0].id'
$ git log --oneline -n 5
{"model": "demo", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
{"id": "req-0042", "object": "chat.completion", "created": 1718000000, "usage": {"prompt_tokens": 12, "completion_tokens": 7}}
name,age,city,score
alice,34,Berlin,91.5
bob,27,Lisbon,78.25
carol,45,Osaka,88.0
SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id LIMIT 10;
for (int i = 0; i < n; ++i) { sum += values[i] * weights[i]; }
fn main() { let xs: Vec<u32> = (1..=10).collect(); println!("{:?}", xs); }
const total = items.reduce((acc, x) => acc + x.price * x.qty, 0);
<html><body><p class="note">Hello, world &amp; friends.</p></body></html>
# Heading
- item one
- item two: **bold** and `code`
> A quoted line.
Version 2.13.0, released 2025-03-14. Throughput: 1,234.5 tokens/s; latency p50 = 12 ms, p99 = 87 ms.
3.14159 2.71828 1.41421 0.57721 1024 2048 4096 8192 65536 1000000
"""

_WORLD = """\
Bonjour, je m'appelle Claire et j'habite à Lyon. Le café est très bon ici.
Guten Morgen! Wie geht es Ihnen? Ich trinke gern Kaffee mit Milch.
¡Hola! ¿Dónde está la estación de tren? Está cerca de la plaza mayor.
Olá, tudo bem? O pão de queijo é delicioso.
Привет! Как дела? Сегодня хорошая погода.
こんにちは、世界。今日はいい天気ですね。
你好，世界。我们一起去图书馆吧。
안녕하세요. 만나서 반갑습니다.
Γεια σου κόσμε. Η θάλασσα είναι γαλάζια.
Smileys: 🙂 😀 🚀 ✨ — “quotes”, ‘single’, ellipsis… and a non-breaking space: a b.
"""

CORPUS: str = "\n".join((_PROSE, _DIALOGUE, _CODE, _SHELL_AND_DATA, _WORLD))
"""The whole training text, in a fixed order."""
