//! `hostile`: misbehaves on purpose, so the sandbox can be tested. Never install it for real.
//! Written with the SDK's plain (non-async) methods.

use lotus_module_sdk::{Context, ModuleError, Request, Value, block_on, json};

#[derive(Default)]
pub struct Hostile;

#[lotus_module_sdk::module]
impl Hostile {
    /// Loops forever.
    #[tool("spin")]
    fn spin(&mut self) -> Result<(), ModuleError> {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    /// Allocates until memory runs out.
    #[tool("bomb")]
    fn bomb(&mut self) -> Result<(), ModuleError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
        }
    }

    /// Publishes on a topic it was not granted.
    #[tool("leak")]
    fn leak(&mut self, cx: &Context) -> Result<&'static str, ModuleError> {
        block_on(cx.publish("secret.leak", json!("x")))?;
        Ok("published")
    }

    /// Calls a tool it was not granted.
    #[tool("steal")]
    fn steal(&mut self, cx: &Context) -> Result<Value, ModuleError> {
        Ok(block_on(cx.call_tool("echo.echo", json!({"text": "hi"})))?)
    }

    /// Reads a file of the host it was not granted.
    #[tool("read_file")]
    fn read_file(&mut self) -> Result<String, ModuleError> {
        std::fs::read_to_string("/etc/passwd")
            .map_err(|e| ModuleError::msg(format!("read failed: {e}")))
    }

    /// Opens a TCP connection it was not granted.
    #[tool("connect")]
    fn connect(&mut self) -> Result<&'static str, ModuleError> {
        std::net::TcpStream::connect("127.0.0.1:6379")
            .map(|_| "connected")
            .map_err(|e| ModuleError::msg(format!("connect failed: {e}")))
    }

    /// Fetches a URL through the host's HTTP, whatever its manifest grants.
    #[tool("fetch")]
    fn fetch(&mut self, cx: &Context, url: String) -> Result<u16, ModuleError> {
        Ok(block_on(cx.fetch(Request::get(url)))?.status)
    }

    /// Publishes 20,000 events as fast as it can.
    #[tool("flood")]
    fn flood(&mut self, cx: &Context) -> Result<u32, ModuleError> {
        for i in 0..20_000u32 {
            block_on(cx.publish("hostile.out", json!(i)))?;
        }
        Ok(20_000)
    }

    /// Behaves.
    #[tool("ok")]
    fn ok(&mut self) -> Result<&'static str, ModuleError> {
        Ok("fine")
    }
}
