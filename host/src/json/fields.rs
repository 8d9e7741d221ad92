//! Which of a list of wanted names each member of an object is, in about one comparison per
//! member when the objects are written alike.
//!
//! A producer writes its events' members in one order, so the member at a given place in one
//! event usually has the same key as the member at that place in the event before. A
//! [`FieldFinder`] remembers what each place held in the last object and checks the key against
//! that first; only a key that differs is looked for among all the wanted names.

/// Places remembered: members past this many are looked for among every wanted name.
const MAX_PLACES: usize = 256;
/// Bytes of unwanted keys remembered, all places together.
const MAX_OTHER_BYTES: usize = 16 * 1024;

/// What the member at one place of the last object was.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// Nothing remembered yet.
    Unknown,
    /// The wanted name at this index.
    Field(usize),
    /// A key no wanted name matches: its bytes in [`FieldFinder::others`].
    Other { start: usize, end: usize },
}

/// Finds the members of a sequence of objects among `fields`: call [`FieldFinder::object`] at the
/// start of each object, then [`FieldFinder::find`] with each member's key, in order.
#[derive(Debug)]
pub struct FieldFinder<'f> {
    fields: &'f [String],
    /// What each place held in the objects so far (the latest one to differ).
    places: Vec<Seen>,
    /// The unwanted keys of `places`, end to end.
    others: String,
    /// The place of the next member of the current object.
    next: usize,
}

impl<'f> FieldFinder<'f> {
    /// A finder of `fields`, knowing no object yet.
    pub fn new(fields: &'f [String]) -> Self {
        FieldFinder {
            fields,
            places: Vec::new(),
            others: String::new(),
            next: 0,
        }
    }

    /// The names it finds.
    pub fn fields(&self) -> &'f [String] {
        self.fields
    }

    /// The next member is the first of a new object.
    pub fn object(&mut self) {
        self.next = 0;
    }

    /// The index in `fields` of `key`, the next member of the current object; `None` when it is
    /// not one of them.
    pub fn find(&mut self, key: &str) -> Option<usize> {
        let place = self.next;
        self.next += 1;
        match self.places.get(place) {
            Some(&Seen::Field(index)) if self.fields.get(index).is_some_and(|f| f == key) => {
                return Some(index);
            }
            Some(&Seen::Other { start, end }) if self.others.get(start..end) == Some(key) => {
                return None;
            }
            _ => {}
        }
        let found = self.fields.iter().position(|field| field == key);
        self.remember(place, key, found);
        found
    }

    fn remember(&mut self, place: usize, key: &str, found: Option<usize>) {
        if place >= MAX_PLACES {
            return;
        }
        let seen = match found {
            Some(index) => Seen::Field(index),
            None if self.others.len() + key.len() <= MAX_OTHER_BYTES => {
                let start = self.others.len();
                self.others.push_str(key);
                Seen::Other {
                    start,
                    end: self.others.len(),
                }
            }
            // Objects whose unwanted keys keep changing: stop remembering them.
            None => Seen::Unknown,
        };
        if place >= self.places.len() {
            self.places.resize(place + 1, Seen::Unknown);
        }
        self.places[place] = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    /// Whatever order objects are written in, and however it changes from one to the next, each
    /// key is found where a search of every name finds it.
    #[test]
    fn finds_each_key_as_a_full_search_would() {
        let fields = names(&["DeviceId", "Temperature", "Timestamp", "Ab", "Ba"]);
        let objects: [&[&str]; 7] = [
            &["DeviceId", "Location", "Temperature", "Timestamp"],
            &["DeviceId", "Location", "Temperature", "Timestamp"],
            &["Location", "DeviceId", "Timestamp", "Temperature", "Extra"],
            &[
                "DeviceId",
                "Locatiom",
                "Temperature",
                "Ba",
                "Ab",
                "Extra",
                "More",
            ],
            &[],
            &["Ab", "Ba", "Ba", "Ab"],
            &["DeviceId", "Location", "Temperature", "Timestamp"],
        ];
        let mut finder = FieldFinder::new(&fields);
        for _ in 0..2 {
            for object in objects {
                finder.object();
                for key in object {
                    assert_eq!(
                        finder.find(key),
                        fields.iter().position(|f| f == key),
                        "{key} in {object:?}"
                    );
                }
            }
        }
    }

    /// Objects with more members than it remembers, and unwanted keys that never repeat, are
    /// still read right, with what it remembers bounded.
    #[test]
    fn stays_bounded_and_right_past_its_limits() {
        let fields = names(&["wanted"]);
        let mut finder = FieldFinder::new(&fields);
        for round in 0..40 {
            finder.object();
            for place in 0..MAX_PLACES + 10 {
                let key = if place % 7 == 3 {
                    "wanted".to_owned()
                } else {
                    format!("key-{round}-{place}-{}", "x".repeat(20))
                };
                let expected = (key == "wanted").then_some(0);
                assert_eq!(finder.find(&key), expected, "{key}");
            }
        }
        assert!(finder.places.len() <= MAX_PLACES);
        assert!(finder.others.len() <= MAX_OTHER_BYTES);
    }
}
